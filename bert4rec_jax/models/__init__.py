"""The model kinds, one module each, and `build_model`, which picks one by `model.kind`.

- `bert4rec.py`: BERT4Rec (Sun et al., CIKM 2019), the paper this project reproduces;
- `sasrec.py`: SASRec as published (Kang & McAuley, ICDM 2018);
- `layers.py`: what they share (attention, masks, dense and LayerNorm layers, scoring);
- `model_config.py`: the config section they read (`ModelConfig`) and the side features' tables.

Every kind offers the same methods (`encode`, `predict_hidden`, `item_scores`, `__call__`) and
`output_layer(params) -> (table, bias)`, so training, evaluation, export and serving never ask
which kind they hold; `ModelConfig.next_item` says where a history is scored (`scoring.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from bert4rec_jax.models.bert4rec import BERT4Rec
from bert4rec_jax.models.model_config import (
    ATTENTION_IMPLS,
    DTYPES,
    LAST_BLOCK_ROWS,
    MODEL_KINDS,
    PAD_ID,
    USER_FEATURE_PLACEMENTS,
    FeatureTables,
    ModelConfig,
)
from bert4rec_jax.models.sasrec import SASRec

__all__ = [
    "ATTENTION_IMPLS",
    "DTYPES",
    "LAST_BLOCK_ROWS",
    "MODEL_KINDS",
    "PAD_ID",
    "USER_FEATURE_PLACEMENTS",
    "BERT4Rec",
    "FeatureTables",
    "Model",
    "ModelConfig",
    "SASRec",
    "build_model",
    "with_config",
]

# Any kind's module: they share their methods' signatures.
Model = BERT4Rec | SASRec
_CLASSES = {"bert4rec": BERT4Rec, "sasrec": SASRec}


def build_model(
    config: ModelConfig,
    vocab_size: int,
    item_features: Mapping[str, np.ndarray] | None = None,
    user_features: Mapping[str, np.ndarray] | None = None,
    dataset: str = "the data set",
) -> Model:
    """The model of a config (its `kind`), with the feature tables its switches ask for.

    Args:
      config: the model section (`config.RunConfig.model`).
      vocab_size: num_items + 2, known once the data set is loaded.
      item_features: `Corpus.item_features`; used only when `model.item_features`.
      user_features: `Corpus.user_features`; used only when `model.user_features` is set.
      dataset: named in errors.

    Returns:
      The model; with both switches off exactly `BERT4Rec(config)` (or `SASRec(config)`) with
      vocab_size set.

    Raises:
      ValueError: a switch is on and the data set has no such features.
    """
    cfg = dataclasses.replace(config, vocab_size=int(vocab_size))
    tables = FeatureTables()
    if cfg.item_features:
        if not item_features:
            raise ValueError(
                f"model.item_features=True but {dataset} has no item features (ml-100k-raw has "
                "them; for dataset=file set file.item_features_path)"
            )
        tables = dataclasses.replace(tables, items=dict(item_features))
    if cfg.user_features:
        if not user_features:
            raise ValueError(
                f"model.user_features={cfg.user_features!r} but {dataset} has no user features "
                "(ml-100k-raw has them)"
            )
        tables = dataclasses.replace(tables, users=dict(user_features))
    return _CLASSES[cfg.kind](cfg, tables)


def with_config(model: Model, config: ModelConfig) -> Model:
    """The same kind and feature tables with another config (e.g. another attention kernel)."""
    return type(model)(config, model.tables)
