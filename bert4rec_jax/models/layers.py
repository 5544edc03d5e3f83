"""What the model kinds share: dense and LayerNorm layers in the compute dtype, multi-head
attention (jax's kernel, or written out where its probabilities are dropped out), the attention
masks, and row gathers.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert4rec_jax.models.model_config import ModelConfig

# The attention logit of a masked key (manual path): finite, as jax.nn.dot_product_attention's.
MASKED_LOGIT = -0.7 * float(np.finfo(np.float32).max)


def dense(
    config: ModelConfig, features: int, name: str | None, kernel_init: nn.initializers.Initializer
) -> nn.Dense:
    """A Dense layer computing in the config's dtype, float32 parameters, zero bias."""
    return nn.Dense(
        features,
        dtype=config.dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        bias_init=nn.initializers.zeros,
        name=name,
    )


def layer_norm(config: ModelConfig, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm with the config's epsilon, returning the compute dtype."""
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
      query: [B, T, heads, head_dim].
      key, value: [B, S, heads, head_dim].
      mask: boolean, broadcastable to [B, heads, T, S]; True = may attend.
      dropout: applied to the probabilities when given (it carries its own `deterministic`).

    Returns:
      [B, T, heads, head_dim] in value's dtype.
    """
    scale = 1.0 / np.sqrt(query.shape[-1])
    logits = jnp.einsum("btnh,bsnh->bnts", query, key, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(scale)  # [B, heads, T, S]
    logits = jnp.where(mask, logits, jnp.float32(MASKED_LOGIT))
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout is not None:
        probs = dropout(probs)
    return jnp.einsum("bnts,bsnh->btnh", probs.astype(value.dtype), value)


def attend(
    config: ModelConfig,
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array,
    *,
    train: bool,
) -> jax.Array:
    """Scaled dot-product attention over heads, [B, T, heads, hd] from [B, S, heads, hd] keys.

    Call inside a module's compact method: with attention dropout in training it creates the
    Dropout there. `jax.nn.dot_product_attention` has no dropout on the probabilities, so that
    case takes the explicit path; otherwise jax's (XLA or cuDNN) kernel runs.
    """
    if config.attention_impl == "manual" or (train and config.attention_dropout > 0.0):
        dropout = nn.Dropout(config.attention_dropout, deterministic=not train)
        return manual_attention(query, key, value, mask, dropout)
    if config.attention_impl == "cudnn":
        # cuDNN turns the mask into a bias and refuses one not of full [.., T, S] size.
        b, t, _, _ = query.shape
        mask = jnp.broadcast_to(mask, (b, 1, t, key.shape[1]))
    return jax.nn.dot_product_attention(
        query, key, value, mask=mask, implementation=config.attention_impl
    )


def key_mask(valid: jax.Array) -> jax.Array:
    """bool [B, 1, 1, N]: which keys may be attended, from valid [B, N] (False = padding).

    A row of padding only would mask every key; it attends everywhere instead, so every
    implementation (cuDNN included) gives the same finite, unused result.
    """
    valid = valid | ~jnp.any(valid, axis=-1, keepdims=True)
    return valid[:, None, None, :]


def causal_mask(valid: jax.Array, queries: jax.Array | None = None) -> jax.Array:
    """bool [B, 1, T, N]: query t may read key s <= t that is not padding.

    Args:
      valid: [B, N] bool, False = padding.
      queries: [B, T] int positions of the queries; None = every position (T = N).
    """
    n = valid.shape[1]
    keys = jnp.arange(n, dtype=jnp.int32)  # [N]
    if queries is None:
        allowed = (keys[None, :] <= keys[:, None])[None, None]  # [1, 1, N, N]
    else:
        allowed = keys[None, None, None, :] <= queries[:, None, :, None]  # [B, 1, T, N]
    return key_mask(valid) & allowed


def gather_rows(x: jax.Array, positions: jax.Array) -> jax.Array:
    """[B, P, ...]: the rows `positions` [B, P] of x [B, N, ...]."""
    index = positions.astype(jnp.int32).reshape(positions.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def mean_embedding(table: jax.Array, ids: jax.Array) -> jax.Array:
    """[..., H]: the mean embedding of the non-zero ids in [..., w]; 0 where there are none.

    The mean rather than the sum, so that a film with four genres is not louder at the input
    than a film with one. Id 0 (none) is multiplied away, so its row gets no gradient.
    """
    present = (ids != 0).astype(jnp.float32)[..., None]  # [..., w, 1]
    emb = jnp.take(table, ids, axis=0) * present  # [..., w, H]
    return emb.sum(axis=-2) / jnp.maximum(present.sum(axis=-2), 1.0)


def table_sizes(tables: Mapping[str, np.ndarray], kind: str) -> dict[str, int]:
    """Rows of each feature's embedding table: its largest category id + 1, in name order."""
    if not tables:
        raise ValueError(f"model.{kind}_features is on but the model got no {kind} feature tables")
    return {name: max(2, int(np.max(tables[name], initial=0)) + 1) for name in sorted(tables)}


def score_items(
    h: jax.Array, table: jax.Array, bias: jax.Array | None, item_ids: jax.Array | None = None
) -> jax.Array:
    """Scores h . table[item] (+ bias[item]) in float32: every kind's tied output layer.

    Args:
      h: [B, H] or [B, P, H] head features.
      table: [V, H] float32 item table.
      bias: [V] float32 output bias, or None (a kind without one).
      item_ids: None = the whole table (-> [..., V]); [C] = the same candidates for every row
        (-> [B, C] or [B, P, C]); [B, C] = per-row candidates (-> [B, C] for h [B, H], [B, P, C]
        for h [B, P, H]).

    Returns:
      float32 scores.
    """
    h = h.astype(jnp.float32)
    if item_ids is None:
        scores = jnp.einsum("...h,vh->...v", h, table)
        return scores if bias is None else scores + bias
    item_ids = item_ids.astype(jnp.int32)
    emb = jnp.take(table, item_ids, axis=0)  # [C, H] or [B, C, H]
    b = 0.0 if bias is None else jnp.take(bias, item_ids, axis=0)  # [C] or [B, C]
    if item_ids.ndim == 1:
        return jnp.einsum("...h,ch->...c", h, emb) + b
    if item_ids.ndim != 2 or item_ids.shape[0] != h.shape[0]:
        raise ValueError(f"item_ids {item_ids.shape} do not fit h {h.shape}")
    if h.ndim == 2:
        return jnp.einsum("bh,bch->bc", h, emb) + b
    return jnp.einsum("bph,bch->bpc", h, emb) + (b if bias is None else b[:, None, :])
