"""SASRec as published (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018):
causal self-attention over a user's items, trained to predict the next item at every position,
scored at the history's last item.

It follows the authors' TensorFlow code (kang205/SASRec: model.py, modules.py), read for its
details; pmixer/SASRec.pytorch, the most used port, agrees except where noted. Per block, with
padding rows zeroed (`keep`):

    x0 = Drop(E[ids] * sqrt(d) + P[pos]) * keep
    q  = LN(x)                                   only the query is normalised
    y  = q + Attn(q W_q, x W_k, x W_v)           causal, padding keys masked, no out projection
    f  = LN(y)
    x' = (f + Drop(W_2 Drop(ReLU(W_1 f)))) * keep    point-wise FFN, d -> intermediate -> d
    h  = LN(x_L)                                 the final LayerNorm
    score(i) = h . E[i]                          the input table, no transform, no bias

Positions count from the end of the history, as the reference's left padding makes them: the
most recent item always sits at position max_len - 1 (here inputs are padded at the end, so the
position of column t of a row of n items is max_len - n + t). Every other departure:
- the table has BERT4Rec's rows (padding, items, [MASK]): the [MASK] row is never read, and row
  0 is a learned row, not a constant zero (padding inputs are zeroed by `keep` anyway; the full
  softmax pushes both columns down, as BERT4Rec's does);
- `model.hidden_dropout` drops the embeddings and the FFN, `model.attention_dropout` the
  attention probabilities (the reference has one rate for all, which configs set alike);
- the FFN's width is `model.intermediate_size` (the published model: d; configs set it);
- pmixer's port adds an output projection to the attention (torch's MultiheadAttention) and
  initialises with Glorot normal; the authors' code, followed here, has neither (Glorot uniform,
  TF1's default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert4rec_jax.models.layers import (
    attend,
    causal_mask,
    dense,
    gather_rows,
    layer_norm,
    score_items,
)
from bert4rec_jax.models.model_config import PAD_ID, FeatureTables, ModelConfig

# TF1's default initialiser for tf.get_variable and tf.layers.dense / conv1d kernels.
_INIT = nn.initializers.glorot_uniform()


def end_aligned_positions(valid: jax.Array, max_len: int) -> jax.Array:
    """int32 [B, N]: the position index of each column, counted so that a row's last item is at
    max_len - 1 (the reference's left-padded layout); padding columns get max_len - 1 (their
    rows are zeroed).

    Args:
      valid: [B, N] bool, items first, then padding.
      max_len: the model's positions.
    """
    n = valid.shape[1]
    lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)  # [B]
    index = max_len - lengths[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]  # [B, N]
    return jnp.clip(index, 0, max_len - 1)


class SASRecBlock(nn.Module):
    """One self-attention block (see the module docstring)."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        keep: jax.Array,
        mask: jax.Array,
        *,
        train: bool,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """[B, N, H], or [B, P, H] for only the rows `positions` [B, P] (keys are still all N).

        Args:
          x: [B, N, H], padding rows zero.
          keep: [B, N, 1], 1 for an item, 0 for padding.
          mask: bool [B, 1, T, N], T = N or P: which keys each query reads.
          train: enables dropout.
          positions: the rows to compute; None = every row.
        """
        cfg = self.config
        b = x.shape[0]
        heads, head_dim = cfg.num_heads, cfg.hidden_size // cfg.num_heads
        drop = nn.Dropout(cfg.hidden_dropout, deterministic=not train)
        rows = x if positions is None else gather_rows(x, positions)  # [B, T, H]
        keep_rows = keep if positions is None else gather_rows(keep, positions)  # [B, T, 1]

        q = layer_norm(cfg, "attention_layer_norm")(rows)  # [B, T, H]

        def project(name: str, y: jax.Array) -> jax.Array:
            y = dense(cfg, cfg.hidden_size, name, _INIT)(y)
            return y.reshape(b, y.shape[1], heads, head_dim)  # [B, T or N, heads, hd]

        ctx = attend(cfg, project("query", q), project("key", x), project("value", x), mask,
                     train=train)  # fmt: skip
        y = q + ctx.reshape(b, -1, cfg.hidden_size)  # the residual is the normalised query
        f = layer_norm(cfg, "feed_forward_layer_norm")(y)
        h = dense(cfg, cfg.intermediate_size, "feed_forward_in", _INIT)(f)  # [B, T, I]
        h = drop(nn.relu(h))
        h = drop(dense(cfg, cfg.hidden_size, "feed_forward_out", _INIT)(h))  # [B, T, H]
        return (f + h) * keep_rows


class SASRec(nn.Module):
    """SASRec's encoder and its tied output layer (no bias).

    Methods usable with `apply(..., method=...)`: `encode`, `predict_hidden`, `item_scores`,
    `__call__`, with BERT4Rec's signatures (`users` is accepted and not read). Dropout needs an
    rng named "dropout" when train=True.

    Parameters (the `params` collection):
      item_embedding       [vocab_size, hidden]  the input table and the output layer
      position_embedding   [max_len, hidden]
      layers_{i}           {attention_layer_norm, query, key, value, feed_forward_layer_norm,
                            feed_forward_in, feed_forward_out}
      final_layer_norm     {scale, bias}
    """

    config: ModelConfig
    tables: FeatureTables = FeatureTables()  # none: SASRec has no side features

    def setup(self):
        cfg = self.config
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is None: build the model with build_model")
        self.item_embedding = self.param(
            "item_embedding", _INIT, (cfg.vocab_size, cfg.hidden_size), jnp.float32
        )
        self.position_embedding = self.param(
            "position_embedding", _INIT, (cfg.max_len, cfg.hidden_size), jnp.float32
        )
        self.embedding_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = [SASRecBlock(cfg) for _ in range(cfg.num_layers)]
        self.final_layer_norm = layer_norm(cfg)

    def encode(
        self,
        ids: jax.Array,
        *,
        train: bool,
        users: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """Final hidden states (after the final LayerNorm) of every position, or of `positions`.

        Args:
          ids: [B, N] int item ids, items first, then padding 0; N <= max_len.
          train: enables dropout.
          users: not read (SASRec has no user input).
          positions: None, or [B, P] int indices into N: then the last block computes only these
            rows (their keys and values still come from every earlier position).

        Returns:
          [B, N, H] ([B, P, H] with positions) in the compute dtype.
        """
        del users
        cfg = self.config
        n = ids.shape[1]
        if n > cfg.max_len:
            raise ValueError(f"sequence length {n} exceeds model.max_len={cfg.max_len}")
        valid = ids != PAD_ID  # [B, N]
        keep = valid[..., None].astype(cfg.dtype)  # [B, N, 1]
        scale = np.float32(np.sqrt(cfg.hidden_size))
        x = jnp.take(self.item_embedding, ids, axis=0) * scale  # [B, N, H] float32
        x = x + jnp.take(self.position_embedding, end_aligned_positions(valid, cfg.max_len), axis=0)
        x = self.embedding_dropout(x.astype(cfg.dtype), deterministic=not train) * keep
        mask = causal_mask(valid)  # [B, 1, N, N]
        if positions is None:
            for layer in self.layers:
                x = layer(x, keep, mask, train=train)
            return self.final_layer_norm(x)
        positions = positions.astype(jnp.int32)
        for layer in self.layers[:-1]:
            x = layer(x, keep, mask, train=train)
        last_mask = causal_mask(valid, positions)  # [B, 1, P, N]: the given rows' own keys
        x = self.layers[-1](x, keep, last_mask, train=train, positions=positions)
        return self.final_layer_norm(x)

    def predict_hidden(
        self,
        ids: jax.Array,
        positions: jax.Array,
        *,
        train: bool,
        users: jax.Array | None = None,
        last_block_at_positions: bool = False,
    ) -> jax.Array:
        """[B, P, H]: the states at `positions` [B, P] (what is dotted with item embeddings);
        `last_block_at_positions` computes the last block for those rows only (the same
        function, less work)."""
        if last_block_at_positions:
            return self.encode(ids, train=train, users=users, positions=positions)
        return gather_rows(self.encode(ids, train=train, users=users), positions)

    def item_scores(self, h: jax.Array, item_ids: jax.Array | None = None) -> jax.Array:
        """float32 h . E[item]: `layers.score_items` without a bias."""
        return score_items(h, self.item_embedding, None, item_ids)

    @staticmethod
    def output_layer(params: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
        """(table [V, H], bias [V]) for the losses and the artifact: the input table and a zero
        bias (SASRec has none; a constant, so nothing trains it)."""
        table = params["item_embedding"]
        return table, jnp.zeros(table.shape[:1], jnp.float32)

    def __call__(
        self,
        ids: jax.Array,
        positions: jax.Array,
        *,
        train: bool,
        users: jax.Array | None = None,
    ) -> jax.Array:
        """[B, P, vocab_size] float32 logits at `positions`."""
        return self.item_scores(self.predict_hidden(ids, positions, train=train, users=users))
