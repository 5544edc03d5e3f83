"""The model section of a config (`ModelConfig`), shared by every model kind, and the side
features' lookup tables (`FeatureTables`).

Ids, for every kind: 0 is padding, 1..num_items are items, num_items + 1 is [MASK] (BERT4Rec's;
the left-to-right kinds never read it, but keep its row so that every kind's table has the same
shape for the losses, the sharding and the artifact).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

PAD_ID = 0

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Where user features enter: "" = nowhere (the paper's model).
USER_FEATURE_PLACEMENTS = ("", "prefix", "add", "mask")
# "manual" is ours, not jax's: always the explicit softmax path (used for attention dropout).
ATTENTION_IMPLS = (None, "xla", "cudnn", "manual")
# Which rows the last block computes in training: "all" (every position, the paper's numerics and
# dropout draws) or "scored" (only the positions the loss reads; keys and values still come from
# every position). The same function: the other rows of the last block are never read.
LAST_BLOCK_ROWS = ("all", "scored")
# "bert4rec" (Sun et al., CIKM 2019): bidirectional, cloze-trained, scored at an appended [MASK].
# "sasrec" (Kang & McAuley, ICDM 2018, as published): causal self-attention, trained to predict
# the next item at every position, scored at the history's last item (models/sasrec.py).
MODEL_KINDS = ("bert4rec", "sasrec")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static description of the network: the config's `model` section (`config.RunConfig`).

    The defaults are configs/default.py's (tests/config_test.py checks that they agree).

    Attributes:
      vocab_size: num_items + 2 (0 = padding, 1..num_items = items, num_items + 1 = [MASK]);
        None until the data set is known (`build_model` sets it).
      max_len: number of learned positions; inputs may be shorter.
      hidden_size: d, the width of embeddings and hidden states.
      num_layers: L, transformer blocks.
      num_heads: attention heads; must divide hidden_size.
      intermediate_size: width of the feed-forward layer (BERT4Rec: 4d; SASRec as published: d).
      hidden_dropout: dropout on the embeddings and the blocks' outputs (see each kind).
      attention_dropout: dropout on the attention probabilities.
      layer_norm_eps: LayerNorm epsilon (BERT's original is 1e-12, SASRec's 1e-8).
      init_std: BERT4Rec's truncated-normal standard deviation (before truncation at 2 std);
        SASRec initialises as its reference code does (Glorot uniform) and ignores it.
      dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters are always float32.
      attention_impl: passed to `jax.nn.dot_product_attention` (None lets JAX choose, "xla",
        "cudnn"), or "manual" for the explicit softmax path everywhere.
      item_features: add item feature embeddings to the input (needs `FeatureTables.items`);
        BERT4Rec only.
      user_features: where user feature embeddings enter, one of `USER_FEATURE_PLACEMENTS`:
        "" off; "prefix" one extra token before the sequence; "add" at every position; "mask"
        at [MASK] positions only (needs `FeatureTables.users`); BERT4Rec only.
      kind: one of `MODEL_KINDS`.
      last_block: one of `LAST_BLOCK_ROWS`: the rows the last block computes in training.
        (Export always computes the scored row alone, evaluation every row.)
    """

    vocab_size: int | None = None
    max_len: int = 50
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    hidden_dropout: float = 0.2
    attention_dropout: float = 0.2
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    dtype: Any = jnp.float32
    attention_impl: str | None = None
    item_features: bool = False
    user_features: str = ""
    kind: str = "bert4rec"
    last_block: str = "all"

    def __post_init__(self):
        if self.vocab_size is not None and self.vocab_size < 3:
            raise ValueError(f"vocab_size={self.vocab_size}: need padding, [MASK] and an item")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.num_heads={self.num_heads} must divide model.hidden_size={self.hidden_size}"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"model.{name}={getattr(self, name)} must be in [0, 1)")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"model.attention_impl={self.attention_impl!r}; expected one of {ATTENTION_IMPLS}"
            )
        if jnp.dtype(self.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
            raise ValueError(f"model.dtype={self.dtype}; expected float32 or bfloat16")
        if self.attention_impl == "cudnn" and jnp.dtype(self.dtype) != jnp.dtype(jnp.bfloat16):
            # Otherwise jax raises deep inside the first compile.
            raise ValueError('model.attention_impl="cudnn" needs model.dtype="bfloat16"')
        if self.user_features not in USER_FEATURE_PLACEMENTS:
            raise ValueError(
                f"model.user_features={self.user_features!r}; expected one of "
                f"{USER_FEATURE_PLACEMENTS}"
            )
        if self.last_block not in LAST_BLOCK_ROWS:
            raise ValueError(
                f"model.last_block={self.last_block!r}; expected one of {LAST_BLOCK_ROWS}"
            )
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model.kind={self.kind!r}; expected one of {MODEL_KINDS}")
        if self.kind != "bert4rec" and (self.item_features or self.user_features):
            # The published models have none; the side features are BERT4Rec's future work.
            raise ValueError(
                f"model.item_features / model.user_features are BERT4Rec's switches; "
                f"model.kind={self.kind!r} is the published model without side features"
            )

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1

    @property
    def next_item(self) -> bool:
        """Left to right: trained to predict the next item at every position, scored at the
        history's last item (no [MASK])."""
        return self.kind != "bert4rec"  # BERT4Rec is the one cloze-trained kind


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureTables:
    """Category-id lookup tables of the side features: model inputs that never change.

    They are data (from the corpus, `datasets/features.py`), not parameters: the model closes
    over them as constants, so batches carry only item ids (and a user row), and no input
    pipeline needs to know about features.

    Attributes:
      items: name -> int [vocab_size, width] category ids by item id, 0 = none; padding and
        [MASK] rows are zero.
      users: name -> int [num_users + 1, width] category ids by user row (corpus user u is row
        u + 1; row 0 = unknown user, zero).
    """

    items: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    users: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
