"""Checkpoint -> artifact directory: the served functions (`serving.py`) written beside their
parameters, the item vocabulary, the config and a checksummed manifest (`artifact.py`'s layout).
The command line is `__main__.py`.

Signatures are in docs/serving.md; raw ids are mapped by `recommend`.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import pathlib
import shutil
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bert4rec_jax import models, scoring
from bert4rec_jax.export import artifact
from bert4rec_jax.export.serving import (
    DEFAULT_PLATFORMS,
    ENCODE_SIGNATURE,
    EXCLUDE_SEEN,
    HISTORY,
    ITEM_IDS,
    SCORES,
    SIGNATURE,
    USER_VECTORS,
    USERS,
    export_encode_fn,
    export_serving_fn,
    serving_model,
    write_saved_model,
)

if TYPE_CHECKING:
    import ml_collections

DEFAULT_TOP_K = 100
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def _versions(saved_model: bool) -> dict[str, str]:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    out = {p: version(p) for p in ("bert4rec_jax", "jax", "jaxlib", "flax", "numpy")}
    out["jax"] = jax.__version__  # the one imported, whatever the metadata says
    if saved_model:
        import tensorflow as tf  # imported already by the SavedModel writer

        out["tensorflow"] = tf.__version__  # the distribution may be tensorflow-cpu
    return out


def _check_vocabulary(
    vocabulary: np.ndarray, size: int, name: str = "vocabulary", what: str = "item"
) -> np.ndarray:
    """Raw ids by dense id ([0] stands for padding / the unknown user), checked."""
    vocabulary = np.asarray(vocabulary)
    if vocabulary.dtype == object and all(isinstance(x, str) for x in vocabulary[1:]):
        # Python strings in an object array: stored as a unicode array, which needs no pickle.
        vocabulary = np.array([""] + vocabulary[1:].tolist(), dtype=str)
    if vocabulary.ndim != 1 or vocabulary.dtype.kind not in "iuUS":
        raise ValueError(
            f"{name}: expected a 1-D array of integer or string raw ids, got "
            f"{vocabulary.dtype} {vocabulary.shape}"
        )
    if len(vocabulary) != size + 1:
        raise ValueError(
            f"{name} has {len(vocabulary)} entries, but the model has {size} {what}s: "
            f"expected {size} + 1 (entry 0 stands for padding or the unknown {what})"
        )
    if len(set(vocabulary[1:].tolist())) != size:
        raise ValueError(f"{name}: raw {what} ids repeat; each {what} needs its own raw id")
    return vocabulary


def _check_params(params: Any, model: models.Model) -> dict[str, Any]:
    """The model's parameters as float32 numpy, checked against the shapes the model builds."""
    config = model.config
    params = jax.device_get(params)
    expected = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0),
            jnp.zeros((1, config.max_len), jnp.int32),
            jnp.zeros((1, 1), jnp.int32),
            train=False,
        )["params"]
    )
    have = artifact.flatten_params(params)
    expected = artifact.flatten_params(expected)
    for name, spec in expected.items():
        if name not in have:
            raise ValueError(f"params: {name} is missing; not the parameters of this model")
        if have[name].shape != spec.shape:
            raise ValueError(
                f"params: {name} has shape {have[name].shape}, the model builds {spec.shape}"
            )
    return artifact.unflatten_params({k: np.asarray(have[k], np.float32) for k in expected})


def _model_json(config: models.ModelConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["dtype"] = jnp.dtype(config.dtype).name
    return out


def export_model(
    model: models.Model,
    params: Any,
    vocabulary: np.ndarray,
    output: str | pathlib.Path,
    *,
    user_ids: np.ndarray | None = None,
    top_k: int = DEFAULT_TOP_K,
    config: ml_collections.ConfigDict | None = None,
    source: dict[str, Any] | None = None,
    saved_model: bool = True,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Writes an export directory from a model, its parameters and its vocabulary.

    The directory appears complete or not at all: everything is written to a sibling temporary
    directory first, then renamed.

    Args:
      model: the model (its config fixes the shapes).
      params: its parameters (any devices; fetched to the host).
      vocabulary: raw item ids by dense id, [num_items + 1], integers or strings; entry 0 stands
        for padding (`Corpus.raw_item_ids`).
      output: the directory to create (local).
      user_ids: raw user ids of the model's user feature rows, [num_users]: user row u + 1
        (`Corpus.raw_user_ids`); needed exactly when the model has `user_features`.
      top_k: items the function returns per history; more than num_items is cut to num_items.
      config: the training config, written as config.json (default: the model's config).
      source: where the parameters come from (workdir, checkpoint, step), for the manifest.
      saved_model: also write the TensorFlow SavedModel (imports TensorFlow).
      platforms: what the function is lowered for.
      overwrite: replace an existing `output`; otherwise a non-empty one is refused.

    Returns:
      The manifest written.
    """
    model = serving_model(model)
    cfg = model.config
    num_items = cfg.vocab_size - 2
    vocabulary = _check_vocabulary(vocabulary, num_items)
    user_rows = {name: np.asarray(t) for name, t in model.tables.users.items()}
    if cfg.user_features:
        if user_ids is None:
            raise ValueError(
                f"model.user_features={cfg.user_features!r}: pass user_ids (the raw id of each "
                "user feature row, Corpus.raw_user_ids) so the artifact can serve known users"
            )
        num_users = len(next(iter(user_rows.values()))) - 1
        user_vocabulary = np.asarray(user_ids)
        pad = "" if user_vocabulary.dtype.kind in "US" else -1
        user_vocabulary = _check_vocabulary(
            np.concatenate([np.array([pad], user_vocabulary.dtype), user_vocabulary]),
            num_users,
            "user_ids",
            "user",
        )
    elif user_ids is not None:
        raise ValueError("user_ids given, but the model has no user_features to read them")
    params = _check_params(params, model)
    # Every artifact holds an output bias beside the table, so its item vectors are always
    # [E[i], bias[i]]; a kind without one (SASRec) exports its zeros (its functions ignore them).
    params.setdefault("output_bias", np.asarray(type(model).output_layer(params)[1], np.float32))
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be positive")
    platforms = tuple(platforms)
    unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
    if unknown or not platforms:
        raise ValueError(f"platforms={list(platforms)}: each must be one of {KNOWN_PLATFORMS}")
    if top_k > num_items:
        logging.warning(
            "top_k=%d is more than the %d items; exporting top_k=%d", top_k, num_items, num_items
        )
        top_k = num_items
    output = pathlib.Path(output).absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise FileExistsError(
            f"{output} exists and is not empty; pass overwrite=True to replace it"
        )

    width = scoring.history_length(cfg.max_len, scoring.appends_mask(cfg.kind))
    tmp = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        exported = export_serving_fn(model, params, top_k, platforms)
        (tmp / artifact.SERVING_FN).write_bytes(exported.serialize())
        encoder = export_encode_fn(model, params, platforms)
        (tmp / artifact.ENCODE_FN).write_bytes(encoder.serialize())
        if cfg.user_features:
            # The feature rows are constants of both functions; kept here too, in the open.
            artifact.write_raw_ids(tmp / artifact.USERS, user_vocabulary)
            np.savez(tmp / artifact.USER_FEATURES, **user_rows)
        flat = artifact.flatten_params(params)
        for name, file in artifact.SEPARATE_PARAMS.items():
            np.save(tmp / file, flat.pop(name), allow_pickle=False)
        np.savez(tmp / artifact.PARAMS, **flat)
        artifact.write_raw_ids(tmp / artifact.VOCABULARY, vocabulary)
        config_text = (
            config.to_json_best_effort(indent=2, sort_keys=True)
            if config is not None
            else json.dumps({"model": _model_json(cfg)}, indent=2, sort_keys=True)
        )
        (tmp / artifact.CONFIG).write_text(config_text + "\n")
        if saved_model:
            write_saved_model(model, params, top_k, tmp / artifact.SAVED_MODEL_DIR, platforms)
        manifest = {
            "format": artifact.FORMAT,
            "format_version": artifact.FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": _versions(saved_model),
            "source": source or {},
            "model": _model_json(cfg),
            "num_items": num_items,
            "max_len": cfg.max_len,
            "history_length": width,
            "hidden_size": cfg.hidden_size,
            "top_k": top_k,
            "user_features": cfg.user_features,
            "num_users": (len(user_vocabulary) - 1) if cfg.user_features else 0,
            "platforms": list(exported.platforms),
            "vocabulary_dtype": "int64" if vocabulary.dtype.kind in "iu" else "str",
            "serving": {
                "function": artifact.SERVING_FN,
                "params": artifact.PARAMS,
                "saved_model": artifact.SAVED_MODEL_DIR if saved_model else None,
                "signature": SIGNATURE if saved_model else None,
                "inputs": {
                    HISTORY: {"dtype": "int32", "shape": ["b", "s"]},
                    USERS: {"dtype": "int32", "shape": ["b"]},
                    EXCLUDE_SEEN: {"dtype": "bool", "shape": ["b"]},
                },
                "outputs": {
                    ITEM_IDS: {"dtype": "int32", "shape": ["b", top_k]},
                    SCORES: {"dtype": "float32", "shape": ["b", top_k]},
                },
            },
            "encode": {
                "function": artifact.ENCODE_FN,
                "signature": ENCODE_SIGNATURE if saved_model else None,
                "inputs": {
                    HISTORY: {"dtype": "int32", "shape": ["b", "s"]},
                    USERS: {"dtype": "int32", "shape": ["b"]},
                },
                "outputs": {
                    USER_VECTORS: {"dtype": "float32", "shape": ["b", cfg.hidden_size + 1]}
                },
            },
            "shapes": {
                name: list(value.shape) for name, value in artifact.flatten_params(params).items()
            }
            | {artifact.VOCABULARY: list(vocabulary.shape)}
            | ({artifact.USERS: list(user_vocabulary.shape)} if cfg.user_features else {}),
        }
        manifest = artifact.write_manifest(tmp, manifest)
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    logging.info(
        "Exported %d items, top_k=%d, to %s (%.1f MB)", num_items, top_k, output, size / 1e6
    )
    return manifest


def export_workdir(
    workdir: str | pathlib.Path,
    output: str | pathlib.Path,
    *,
    checkpoint: str = "best",
    top_k: int = DEFAULT_TOP_K,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    saved_model: bool = True,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Exports a training run's parameters with its data set's vocabulary.

    Args:
      workdir: the run's workdir (config.json, checkpoints/, best/).
      output: the export directory to create.
      checkpoint: "best" (falls back to the latest when the run kept none) or "latest".
      top_k: items returned per history.
      data_dir: overrides the run's config.data_dir (where its prepared corpus is).
      manual_dir: overrides the run's config.manual_dir (an offline copy of the source).
      saved_model: also write the TensorFlow SavedModel.
      platforms: what the function is lowered for.
      overwrite: replace an existing output directory.

    Returns:
      The manifest written.
    """
    from bert4rec_jax import checkpointing, experiment  # Orbax and the data sets: only here
    from bert4rec_jax import config as config_lib
    from bert4rec_jax import workdir as workdir_lib

    workdir, config = workdir_lib.open_run(workdir, data_dir=data_dir, manual_dir=manual_dir)
    exp = experiment.Experiment.from_run(config_lib.RunConfig.from_config_dict(config))
    # Exports are topology-free: the parameters come back onto one device whatever mesh trained
    # them (rows a sharded run padded its item table with are dropped), and the functions are
    # lowered for every platform in `platforms` on whatever machine exports.
    params, step = checkpointing.restore_params(
        workdir, checkpoint, vocab_size=exp.corpus.vocab_size
    )
    source = {
        "workdir": str(workdir),
        "checkpoint": checkpoint,
        "step": step,
        "dataset": exp.config.data.dataset,
    }
    return export_model(
        exp.model,
        params,
        exp.corpus.raw_item_ids,
        output,
        user_ids=exp.corpus.raw_user_ids if exp.model.config.user_features else None,
        top_k=top_k,
        config=config,
        source=source,
        saved_model=saved_model,
        platforms=platforms,
        overwrite=overwrite,
    )
