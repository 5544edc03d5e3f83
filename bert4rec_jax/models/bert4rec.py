"""BERT4Rec (Sun et al., CIKM 2019) in Flax linen: a bidirectional Transformer over item sequences;
SASRec (`model.kind="sasrec"`, Kang & McAuley, ICDM 2018) is the same network with causal attention.

As the original TensorFlow code (FeiSun/BERT4Rec, after Google's BERT): learned absolute positions,
post-LayerNorm blocks, exact GELU, truncated-normal init, and an output head at the masked
positions only, tied to the item embeddings plus an output bias. Ids: 0 is padding, 1..num_items
are items, num_items + 1 is [MASK]. `BERT4Rec`'s docstring lists the parameters and the departures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PAD_ID = 0

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Where user features enter: "" = nowhere (the paper's model).
USER_FEATURE_PLACEMENTS = ("", "prefix", "add", "mask")
# "manual" is ours, not jax's: always the explicit softmax path (used for attention dropout).
ATTENTION_IMPLS = (None, "xla", "cudnn", "manual")
# "bert4rec": bidirectional attention, cloze training, [MASK] appended to score. "sasrec"
# (Kang & McAuley, ICDM 2018): the same network with causal attention, trained to predict the
# next item at every position, scored from the last item's position (no [MASK]).
MODEL_KINDS = ("bert4rec", "sasrec")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static description of the network: the config's `model` section (`config.RunConfig`).

    Attributes:
      vocab_size: num_items + 2 (0 = padding, 1..num_items = items, num_items + 1 = [MASK]);
        None until the data set is known (`build_model` sets it).
      max_len: number of learned positions; inputs may be shorter.
      hidden_size: d, the width of embeddings and hidden states.
      num_layers: L, transformer blocks.
      num_heads: attention heads; must divide hidden_size.
      intermediate_size: width of the feed-forward layer.
      hidden_dropout: dropout on the embeddings, the attention output and the FFN output.
      attention_dropout: dropout on the attention probabilities.
      layer_norm_eps: LayerNorm epsilon (the original's is 1e-12).
      init_std: standard deviation of the truncated normal (before truncation at 2 std).
      dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters are always float32.
      attention_impl: passed to `jax.nn.dot_product_attention` (None lets JAX choose, "xla",
        "cudnn"), or "manual" for the explicit softmax path everywhere.
      item_features: add item feature embeddings to the input (needs `FeatureTables.items`).
      user_features: where user feature embeddings enter, one of `USER_FEATURE_PLACEMENTS`:
        "" off; "prefix" one extra token before the sequence; "add" at every position; "mask"
        at [MASK] positions only (needs `FeatureTables.users`).
      kind: one of `MODEL_KINDS`. "sasrec" makes the attention causal (position t attends to
        positions <= t only); the parameters are the same either way.
    """

    vocab_size: int | None = None
    max_len: int = 200
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
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model.kind={self.kind!r}; expected one of {MODEL_KINDS}")
        if self.causal and self.user_features == "mask":
            raise ValueError(
                'model.user_features="mask" adds the user at [MASK] positions, and '
                'model.kind="sasrec" has none; use "add" or "prefix"'
            )

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1

    @property
    def causal(self) -> bool:
        """Left-to-right attention (SASRec): position t reads positions <= t only."""
        return self.kind == "sasrec"


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


def build_model(
    config: ModelConfig,
    vocab_size: int,
    item_features: Mapping[str, np.ndarray] | None = None,
    user_features: Mapping[str, np.ndarray] | None = None,
    dataset: str = "the data set",
) -> BERT4Rec:
    """The model of a config, with the feature tables its switches ask for.

    Args:
      config: the model section (`config.RunConfig.model`).
      vocab_size: num_items + 2, known once the data set is loaded.
      item_features: `Corpus.item_features`; used only when `model.item_features`.
      user_features: `Corpus.user_features`; used only when `model.user_features` is set.
      dataset: named in errors.

    Returns:
      The model; with both switches off exactly `BERT4Rec(config)` with vocab_size set.

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
    return BERT4Rec(cfg, tables)


def _kernel_init(config: ModelConfig) -> nn.initializers.Initializer:
    # Flax's truncated_normal, like TF's truncated_normal_initializer, draws N(0, stddev^2) cut at
    # +-2 stddev and does NOT rescale, so the realised std is ~0.88 * init_std, as in the original.
    return nn.initializers.truncated_normal(stddev=config.init_std)


def _dense(config: ModelConfig, features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        dtype=config.dtype,
        param_dtype=jnp.float32,
        kernel_init=_kernel_init(config),
        bias_init=nn.initializers.zeros,
        name=name,
    )


def _layer_norm(config: ModelConfig, name: str | None = None) -> nn.LayerNorm:
    # Statistics are computed in float32 whatever the input dtype (force_float32_reductions); the
    # two-pass variance avoids E[x^2] - E[x]^2 cancellation on the un-normalised residual stream.
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        name=name,
    )


def manual_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    dropout: nn.Dropout | None = None,
) -> jax.Array:
    """Softmax attention written out, so the probabilities can be dropped out.

    Mirrors `jax.nn.dot_product_attention`'s XLA path: float32 logits, scale after the product,
    masked logits replaced by a large negative number, float32 softmax.

    Args:
      query, key, value: [B, T, heads, head_dim] (T = S here).
      mask: boolean, broadcastable to [B, heads, T, S]; True = may attend.
      dropout: applied to the probabilities when given (it carries its own `deterministic`).

    Returns:
      [B, T, heads, head_dim] in value's dtype.
    """
    scale = 1.0 / np.sqrt(query.shape[-1])
    logits = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(scale)  # [B, heads, T, S]
    logits = jnp.where(mask, logits, jnp.float32(-0.7 * np.finfo(np.float32).max))
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout is not None:
        probs = dropout(probs)
    return jnp.einsum("bnts,bsnh->btnh", probs.astype(value.dtype), value)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask, followed by the output projection."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, *, train: bool, queries: jax.Array | None = None
    ) -> jax.Array:
        """[B, T, H]: x [B, N, H] attended from `queries` [B, T, H] (default x itself, T = N)."""
        cfg = self.config
        b, n, _ = x.shape
        head_dim = cfg.hidden_size // cfg.num_heads
        queries = x if queries is None else queries
        t = queries.shape[1]

        def project(name: str, y: jax.Array) -> jax.Array:
            # One [H, H] kernel per projection, as in the original (checkpoint-compatible shapes).
            y = _dense(cfg, cfg.hidden_size, name)(y)
            return y.reshape(b, y.shape[1], cfg.num_heads, head_dim)  # [B, T or N, heads, hd]

        q, k, v = project("query", queries), project("key", x), project("value", x)
        # jax.nn.dot_product_attention has no dropout on the probabilities, so training with
        # attention dropout takes the explicit path; otherwise jax's (XLA or cuDNN) kernel runs.
        if cfg.attention_impl == "manual" or (train and cfg.attention_dropout > 0.0):
            dropout = nn.Dropout(cfg.attention_dropout, deterministic=not train)
            ctx = manual_attention(q, k, v, mask, dropout)
        else:
            if cfg.attention_impl == "cudnn":
                # cuDNN turns the mask into a bias and refuses one not of full [.., T, S] size.
                mask = jnp.broadcast_to(mask, (b, 1, t, n))
            ctx = jax.nn.dot_product_attention(
                q, k, v, mask=mask, implementation=cfg.attention_impl
            )
        ctx = ctx.reshape(b, t, cfg.hidden_size)  # [B, T, H]
        return _dense(cfg, cfg.hidden_size, "output")(ctx)


class TransformerBlock(nn.Module):
    """Post-LayerNorm block: x = LN(x + Drop(Attn(x))); x = LN(x + Drop(FFN(x)))."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array, *, train: bool, positions: jax.Array | None = None
    ) -> jax.Array:
        """[B, N, H], or [B, P, H] for only the given positions [B, P] (keys are still all N)."""
        cfg = self.config
        drop = nn.Dropout(cfg.hidden_dropout, deterministic=not train)
        # Every row after the attention depends on its own row alone, so a position nobody reads
        # needs no query, residual or FFN: with `positions`, only those rows go through.
        queries = None if positions is None else _gather_rows(x, positions)
        a = SelfAttention(cfg, name="attention")(x, mask, train=train, queries=queries)
        x = x if queries is None else queries
        x = _layer_norm(cfg, "attention_layer_norm")(x + drop(a))
        h = _dense(cfg, cfg.intermediate_size, "intermediate")(x)  # [B, N or P, I]
        h = nn.gelu(h, approximate=False)
        h = _dense(cfg, cfg.hidden_size, "output")(h)  # [B, N or P, H]
        return _layer_norm(cfg, "output_layer_norm")(x + drop(h))


class BERT4Rec(nn.Module):
    """The encoder plus the masked-item output head with tied item embeddings.

    Methods usable with `apply(..., method=...)`: `encode`, `predict_hidden`, `item_scores`,
    `__call__`. Dropout needs an rng named "dropout" when train=True.

    Parameters (the `params` collection):
      item_embedding       [vocab_size, hidden]  also the output layer (tied)
      position_embedding   [max_len, hidden]
      embedding_layer_norm {scale, bias}
      layers_{i}           {attention: {query, key, value, output: {kernel, bias}},
                            attention_layer_norm, intermediate, output, output_layer_norm}
      head_transform       {kernel, bias}        dense + GELU before the output layer
      head_layer_norm      {scale, bias}
      output_bias          [vocab_size]
    Side features (off by default, and then none of these exist; the category-id tables are
    data, `FeatureTables`, closed over as constants):
      item_feature_{name}  [categories, hidden]  an item's input adds the mean embedding of its
                            category ids
      user_feature_{name}  [categories, hidden]  the user's vector: the sum over features of
                            the mean embedding of its category ids
      user_token           [hidden]              `user_features="prefix"` only (see `encode`)

    Two departures from the original, neither of which changes the function the model can
    represent: its "token type" embedding (always type 0, a constant vector that the position
    embeddings absorb) is left out, and masked attention logits are set to a large negative
    number (as `jax.nn.dot_product_attention` does) rather than having -10000 added; both give
    padding keys zero weight.

    `users` (int [B], user rows: corpus user u is u + 1, 0 = unknown) is read only with
    `config.user_features`; None there means every row is an unknown user.
    """

    config: ModelConfig
    # The side features' lookup tables; read only where the config's switches are on.
    tables: FeatureTables = FeatureTables()

    def setup(self):
        cfg = self.config
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is None: build the model with build_model")
        init = _kernel_init(cfg)
        self.item_embedding = self.param(
            "item_embedding", init, (cfg.vocab_size, cfg.hidden_size), jnp.float32
        )
        self.position_embedding = self.param(
            "position_embedding", init, (cfg.max_len, cfg.hidden_size), jnp.float32
        )
        self.embedding_layer_norm = _layer_norm(cfg)
        self.embedding_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = [TransformerBlock(cfg) for _ in range(cfg.num_layers)]
        self.head_transform = _dense(cfg, cfg.hidden_size, name=None)
        self.head_layer_norm = _layer_norm(cfg)
        self.output_bias = self.param(
            "output_bias", nn.initializers.zeros, (cfg.vocab_size,), jnp.float32
        )
        # Side features: parameters exist only when their switch is on, so the default model's
        # parameter tree is the paper's.
        if cfg.item_features:
            self.item_feature_embeddings = {
                name: self.param(f"item_feature_{name}", init, (n, cfg.hidden_size), jnp.float32)
                for name, n in _table_sizes(self.tables.items, "item").items()
            }
        if cfg.user_features:
            self.user_feature_embeddings = {
                name: self.param(f"user_feature_{name}", init, (n, cfg.hidden_size), jnp.float32)
                for name, n in _table_sizes(self.tables.users, "user").items()
            }
        if cfg.user_features == "prefix":
            # The prefix token's own learned vector: it marks the token as the user's, as a
            # position embedding would, without shifting the items' positions.
            self.user_token = self.param("user_token", init, (cfg.hidden_size,), jnp.float32)

    def user_vector(self, users: jax.Array | None, batch: int) -> jax.Array:
        """[B, H] float32: the sum over user features of their pooled embeddings (0 if unknown)."""
        if users is None:
            users = jnp.zeros((batch,), jnp.int32)  # row 0: the unknown user
        u = jnp.zeros((batch, self.config.hidden_size), jnp.float32)
        for name, emb in self.user_feature_embeddings.items():
            feature_ids = jnp.take(jnp.asarray(self.tables.users[name]), users, axis=0)  # [B, w]
            u = u + _mean_embedding(emb, feature_ids)
        return u

    def encode(
        self,
        ids: jax.Array,
        *,
        train: bool,
        users: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """Final hidden states of every position, or of the given positions only.

        Args:
          ids: [B, N] int item ids, 0 = padding, N <= max_len.
          train: enables dropout.
          users: [B] int user rows (see the class docstring); read only with user features.
          positions: None, or [B, P] int indices into N: then the last block computes only
            these rows (its keys and values still come from every position), which gives the
            same states as gathering them from the full output, for less work.

        Returns:
          [B, N, H] ([B, P, H] with positions) in the compute dtype.
        """
        cfg = self.config
        b, n = ids.shape
        if n > cfg.max_len:
            raise ValueError(f"sequence length {n} exceeds model.max_len={cfg.max_len}")
        # Summed in float32 from the float32 tables; the LayerNorm returns the compute dtype.
        x = jnp.take(self.item_embedding, ids, axis=0) + self.position_embedding[:n]  # [B, N, H]
        if cfg.item_features:
            for name, emb in self.item_feature_embeddings.items():
                # [B, N, w]; padding and [MASK] rows are all 0, so they get no feature.
                feature_ids = jnp.take(jnp.asarray(self.tables.items[name]), ids, axis=0)
                x = x + _mean_embedding(emb, feature_ids)
        valid = ids != PAD_ID  # [B, N]
        if cfg.user_features:
            u = self.user_vector(users, b)  # [B, H]
            if cfg.user_features == "add":
                x = x + u[:, None, :]
            elif cfg.user_features == "mask":
                x = x + jnp.where((ids == cfg.mask_id)[..., None], u[:, None, :], 0.0)
            else:  # "prefix": one more token, position 0, stripped from the output below
                x = jnp.concatenate([(u + self.user_token)[:, None, :], x], axis=1)
                valid = jnp.concatenate([jnp.ones((b, 1), bool), valid], axis=1)  # [B, N + 1]
        x = self.embedding_layer_norm(x)
        x = self.embedding_dropout(x, deterministic=not train)

        # A row of padding only would mask every key; let it attend everywhere instead, so every
        # implementation (cuDNN included) gives the same finite, unused result.
        valid = valid | ~jnp.any(valid, axis=-1, keepdims=True)
        mask = valid[:, None, None, :]  # [B, 1, 1, N]: keys only; padded queries are ignored later
        keys = jnp.arange(x.shape[1], dtype=jnp.int32)  # [N] (N + 1 with a prefix token)
        if cfg.causal:  # query t reads keys <= t; the prefix token (key 0) precedes every item
            mask = mask & (keys[None, :] <= keys[:, None])[None, None]  # [B, 1, N, N]

        if positions is not None:
            positions = positions.astype(jnp.int32)
            if cfg.user_features == "prefix":
                positions = positions + 1  # the prefix token sits before the items
            for layer in self.layers[:-1]:
                x = layer(x, mask, train=train)
            last_mask = mask
            if cfg.causal:  # only the given rows query the last block: their own causal rows
                last_mask = valid[:, None, None, :] & (
                    keys[None, None, None, :] <= positions[:, None, :, None]
                )  # [B, 1, P, N]
            return self.layers[-1](x, last_mask, train=train, positions=positions)  # [B, P, H]
        for layer in self.layers:
            x = layer(x, mask, train=train)
        if cfg.user_features == "prefix":
            # Callers index item positions 0..N-1 (masked positions, [MASK] at evaluation), so
            # the prefix's state is dropped here and nothing downstream shifts.
            x = x[:, 1:]
        return x

    def predict_hidden(
        self,
        ids: jax.Array,
        positions: jax.Array,
        *,
        train: bool,
        users: jax.Array | None = None,
        last_block_at_positions: bool = False,
    ) -> jax.Array:
        """Output-head features at the given positions (what is dotted with item embeddings).

        Args:
          ids: [B, N] int item ids.
          positions: [B, P] int indices into N (e.g. the masked positions).
          train: enables dropout.
          users: [B] int user rows; read only with user features.
          last_block_at_positions: compute the last block for `positions` only (`encode`'s
            `positions`). The same function, cheaper when P << N; off by default so training's
            numerics (and its dropout draws) stay those of the full encoder.

        Returns:
          [B, P, H] in the compute dtype.
        """
        if last_block_at_positions:
            h = self.encode(ids, train=train, users=users, positions=positions)  # [B, P, H]
        else:
            h = _gather_rows(self.encode(ids, train=train, users=users), positions)  # [B, P, H]
        h = nn.gelu(self.head_transform(h), approximate=False)
        return self.head_layer_norm(h)

    def item_scores(self, h: jax.Array, item_ids: jax.Array | None = None) -> jax.Array:
        """Scores h . E[item] + bias[item] in float32.

        The output layer is the id table alone, also with item features: ranking needs a score
        for every item from one [V, H] table (full ranking and export score the whole
        catalogue in chunks of it), and the losses (full, chunked, sampled, sharded) take that
        table as it is; feature embeddings enter at the input only.

        Args:
          h: [B, H] or [B, P, H] head features (from `predict_hidden`).
          item_ids: None = the whole table (-> [..., vocab_size]); [C] = the same candidates for
            every row (-> [B, C] or [B, P, C]); [B, C] = per-row candidates (-> [B, C] for h [B, H],
            [B, P, C] for h [B, P, H]).

        Returns:
          float32 scores.
        """
        h = h.astype(jnp.float32)
        table, bias = self.item_embedding, self.output_bias
        if item_ids is None:
            return jnp.einsum("...h,vh->...v", h, table) + bias
        item_ids = item_ids.astype(jnp.int32)
        emb = jnp.take(table, item_ids, axis=0)  # [C, H] or [B, C, H]
        b = jnp.take(bias, item_ids, axis=0)  # [C] or [B, C]
        if item_ids.ndim == 1:
            return jnp.einsum("...h,ch->...c", h, emb) + b
        if item_ids.ndim != 2 or item_ids.shape[0] != h.shape[0]:
            raise ValueError(f"item_ids {item_ids.shape} do not fit h {h.shape}")
        if h.ndim == 2:
            return jnp.einsum("bh,bch->bc", h, emb) + b
        return jnp.einsum("bph,bch->bpc", h, emb) + b[:, None, :]

    def __call__(
        self,
        ids: jax.Array,
        positions: jax.Array,
        *,
        train: bool,
        users: jax.Array | None = None,
    ) -> jax.Array:
        """Full logits over the vocabulary at the given positions.

        Args:
          ids: [B, N] int item ids.
          positions: [B, P] int positions to predict.
          train: enables dropout.
          users: [B] int user rows; read only with user features.

        Returns:
          [B, P, vocab_size] float32 logits.
        """
        return self.item_scores(self.predict_hidden(ids, positions, train=train, users=users))


def _table_sizes(tables: Mapping[str, np.ndarray], kind: str) -> dict[str, int]:
    """Rows of each feature's embedding table: its largest category id + 1, in name order."""
    if not tables:
        raise ValueError(f"model.{kind}_features is on but the model got no {kind} feature tables")
    return {name: max(2, int(np.max(tables[name], initial=0)) + 1) for name in sorted(tables)}


def _gather_rows(x: jax.Array, positions: jax.Array) -> jax.Array:
    """[B, P, H]: the rows `positions` [B, P] of x [B, N, H]."""
    return jnp.take_along_axis(x, positions[..., None].astype(jnp.int32), axis=1)


def _mean_embedding(table: jax.Array, ids: jax.Array) -> jax.Array:
    """[..., H]: the mean embedding of the non-zero ids in [..., w]; 0 where there are none.

    The mean rather than the sum, so that a film with four genres is not louder at the input
    than a film with one. Id 0 (none) is multiplied away, so its row gets no gradient.
    """
    present = (ids != 0).astype(jnp.float32)[..., None]  # [..., w, 1]
    emb = jnp.take(table, ids, axis=0) * present  # [..., w, H]
    return emb.sum(axis=-2) / jnp.maximum(present.sum(axis=-2), 1.0)
