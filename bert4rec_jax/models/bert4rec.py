"""BERT4Rec (Sun et al., CIKM 2019) in Flax linen: a bidirectional Transformer over item
sequences, trained with the cloze task and scored at an appended [MASK].

As the original TensorFlow code (FeiSun/BERT4Rec, after Google's BERT): learned absolute positions,
post-LayerNorm blocks, exact GELU, truncated-normal init, and an output head at the masked
positions only, tied to the item embeddings plus an output bias. `BERT4Rec`'s docstring lists the
parameters and the departures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert4rec_jax.models.layers import (
    attend,
    dense,
    gather_rows,
    key_mask,
    layer_norm,
    mean_embedding,
    score_items,
    table_sizes,
)
from bert4rec_jax.models.model_config import PAD_ID, FeatureTables, ModelConfig


def _kernel_init(config: ModelConfig) -> nn.initializers.Initializer:
    # Flax's truncated_normal, like TF's truncated_normal_initializer, draws N(0, stddev^2) cut at
    # +-2 stddev and does NOT rescale, so the realised std is ~0.88 * init_std, as in the original.
    return nn.initializers.truncated_normal(stddev=config.init_std)


def _dense(config: ModelConfig, features: int, name: str | None) -> nn.Dense:
    return dense(config, features, name, _kernel_init(config))


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
        ctx = attend(cfg, q, k, v, mask, train=train)  # [B, T, heads, hd]
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
        queries = None if positions is None else gather_rows(x, positions)
        a = SelfAttention(cfg, name="attention")(x, mask, train=train, queries=queries)
        x = x if queries is None else queries
        x = layer_norm(cfg, "attention_layer_norm")(x + drop(a))
        h = _dense(cfg, cfg.intermediate_size, "intermediate")(x)  # [B, N or P, I]
        h = nn.gelu(h, approximate=False)
        h = _dense(cfg, cfg.hidden_size, "output")(h)  # [B, N or P, H]
        return layer_norm(cfg, "output_layer_norm")(x + drop(h))


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
        self.embedding_layer_norm = layer_norm(cfg)
        self.embedding_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = [TransformerBlock(cfg) for _ in range(cfg.num_layers)]
        self.head_transform = _dense(cfg, cfg.hidden_size, name=None)
        self.head_layer_norm = layer_norm(cfg)
        self.output_bias = self.param(
            "output_bias", nn.initializers.zeros, (cfg.vocab_size,), jnp.float32
        )
        # Side features: parameters exist only when their switch is on, so the default model's
        # parameter tree is the paper's.
        if cfg.item_features:
            self.item_feature_embeddings = {
                name: self.param(f"item_feature_{name}", init, (n, cfg.hidden_size), jnp.float32)
                for name, n in table_sizes(self.tables.items, "item").items()
            }
        if cfg.user_features:
            self.user_feature_embeddings = {
                name: self.param(f"user_feature_{name}", init, (n, cfg.hidden_size), jnp.float32)
                for name, n in table_sizes(self.tables.users, "user").items()
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
            u = u + mean_embedding(emb, feature_ids)
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
                x = x + mean_embedding(emb, feature_ids)
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

        mask = key_mask(valid)  # [B, 1, 1, N]: keys only; padded queries are ignored later

        if positions is not None:
            positions = positions.astype(jnp.int32)
            if cfg.user_features == "prefix":
                positions = positions + 1  # the prefix token sits before the items
            for layer in self.layers[:-1]:
                x = layer(x, mask, train=train)
            return self.layers[-1](x, mask, train=train, positions=positions)  # [B, P, H]
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
            h = gather_rows(self.encode(ids, train=train, users=users), positions)  # [B, P, H]
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
        return score_items(h, self.item_embedding, self.output_bias, item_ids)

    @staticmethod
    def output_layer(params: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
        """(table [V, H], bias [V]) of the tied output layer, from the parameters (the losses
        and the artifact score with them; the rows may be a mesh's padded or sharded ones)."""
        return params["item_embedding"], params["output_bias"]

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
