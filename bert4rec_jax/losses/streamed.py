"""The exact softmax streamed over chunks of the item table: same loss, accuracy and gradients
as the full one without its [B, P, V] logits, on one device or with the table's rows split over
the mesh's `model` axis (vocabulary-parallel). One custom VJP serves both.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from bert4rec_jax.losses.core import PADDING_LOGIT, Sums, loss_sums
from bert4rec_jax.sharding import DATA_AXIS, MODEL_AXIS

# ---- Chunked (exact) softmax --------------------------------------------------------------------
#
# Per row n the loss needs three statistics of the logits x[n, :] = h[n] . E^T + b, and the
# gradient needs only a fourth, recomputable one:
#   lse[n]    log sum_v exp x[n, v]           streamed: running max m and sum s of exp(x - m)
#   tgt[n]    x[n, label[n]]                  picked from the chunk that holds the label
#   arg[n]    argmax_v x[n, v], first on ties  the running max m is also the best value
#   dL/dx     g_lse * softmax(x) + g_tgt * onehot(label)   recomputed chunk by chunk
# A vocabulary-parallel version (table rows sharded over the mesh's `model` axis) runs the same
# stream over its own rows with `offset` = its first row and combines the partial statistics
# across the axis: m* = pmax(m), s* = psum(s exp(m - m*)), tgt = psum(tgt) (0 off the owning
# shard), arg = pmin(where(m == m*, arg, V)); its backward recomputes its own rows' gradients with
# the global lse and psums dh.


def _chunk_logits(h: jax.Array, table_c: jax.Array, bias_c: jax.Array) -> jax.Array:
    # [N, H] x [C, H] -> [N, C], float32 (the same contraction as full_logits).
    return jnp.einsum("nh,ch->nc", h, table_c) + bias_c


def _masked(x: jax.Array, start: int | jax.Array, limit: int | None) -> jax.Array:
    """x [N, C] with the columns of global ids start + c >= limit set to PADDING_LOGIT."""
    if limit is None:
        return x
    ids = start + jnp.arange(x.shape[-1], dtype=jnp.int32)  # [C]
    return jnp.where(ids < limit, x, PADDING_LOGIT)


def _stream_stats(
    h: jax.Array,
    table: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    chunk: int,
    offset: int | jax.Array = 0,
    limit: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Running (max, sum of exp(x - max), target logit, argmax) over the rows of `table`.

    Args:
      h: [N, H] float32 features.
      table: [V, H] rows to score (a shard's rows in a vocabulary-parallel version).
      bias: [V].
      labels: [N] int32 global ids.
      chunk: rows scored at once; the last chunk may be shorter.
      offset: the global id of table[0] (may be traced: a shard's axis index times its rows).
      limit: global ids >= limit are padding rows, scored PADDING_LOGIT; None = none.

    Returns:
      m [N] (the best logit), s [N], tgt [N] (0 where the label is not in these rows), arg [N]
      int32 (global id of the first best logit).
    """
    n = h.shape[0]
    vocab = table.shape[0]
    num_full, tail = divmod(vocab, chunk)

    def update(carry, start, table_c, bias_c):
        m, s, tgt, arg = carry
        width = table_c.shape[0]
        x = _masked(_chunk_logits(h, table_c, bias_c), start, limit)  # [N, C]
        c_max = jnp.max(x, axis=-1)  # [N]
        new_m = jnp.maximum(m, c_max)
        s = s * jnp.exp(m - new_m) + jnp.sum(jnp.exp(x - new_m[:, None]), axis=-1)
        # Strictly greater: on a tie the earlier chunk keeps it (jnp.argmax's first index).
        arg = jnp.where(c_max > m, jnp.argmax(x, axis=-1).astype(jnp.int32) + start, arg)
        local = labels - start  # [N]
        inside = (local >= 0) & (local < width)
        picked = jnp.take_along_axis(x, jnp.clip(local, 0, width - 1)[:, None], axis=-1)[:, 0]
        tgt = jnp.where(inside, picked, tgt)
        return new_m, s, tgt, arg

    def body(carry, i):
        start = i * chunk
        table_c = jax.lax.dynamic_slice_in_dim(table, start, chunk)  # [C, H]
        bias_c = jax.lax.dynamic_slice_in_dim(bias, start, chunk)  # [C]
        return update(carry, start + offset, table_c, bias_c), None

    carry = (
        jnp.full((n,), -jnp.inf, jnp.float32),
        jnp.zeros((n,), jnp.float32),
        jnp.zeros((n,), jnp.float32),
        jnp.zeros((n,), jnp.int32),
    )
    if num_full:
        carry, _ = jax.lax.scan(body, carry, jnp.arange(num_full, dtype=jnp.int32))
    if tail:
        # The partial last chunk is its own (static) shape: no padded columns to mask out.
        start = num_full * chunk
        carry = update(carry, start + offset, table[start:], bias[start:])
    return carry


def _stream_grads(
    h: jax.Array,
    table: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    m: jax.Array,
    log_s: jax.Array,
    g_lse: jax.Array,
    g_tgt: jax.Array,
    chunk: int,
    offset: int | jax.Array = 0,
    limit: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gradients of sum_n (g_lse[n] lse[n] + g_tgt[n] tgt[n]), recomputing each chunk's logits.

    lse = m + log_s is passed in its two parts: softmax = exp((x - m) - log_s) subtracts the
    nearby max first, as log_softmax does, so it keeps float32's relative precision where
    exp(x - lse) would lose ulp(lse) when logits are large.

    Returns:
      dh [N, H], dtable [V, H], dbias [V], all float32.
    """
    vocab, hidden = table.shape
    num_full, tail = divmod(vocab, chunk)

    def chunk_grads(dh, start, table_c, bias_c):
        width = table_c.shape[0]
        x = _masked(_chunk_logits(h, table_c, bias_c), start, limit)  # [N, C]
        onehot = (labels - start)[:, None] == jnp.arange(width, dtype=jnp.int32)  # [N, C]
        probs = jnp.exp((x - m[:, None]) - log_s[:, None])  # [N, C]
        dx = g_lse[:, None] * probs + jnp.where(onehot, g_tgt[:, None], 0.0)
        dh = dh + jnp.einsum("nc,ch->nh", dx, table_c)
        return dh, jnp.einsum("nc,nh->ch", dx, h), jnp.sum(dx, axis=0)

    def body(dh, i):
        start = i * chunk
        table_c = jax.lax.dynamic_slice_in_dim(table, start, chunk)
        bias_c = jax.lax.dynamic_slice_in_dim(bias, start, chunk)
        dh, dtable_c, dbias_c = chunk_grads(dh, start + offset, table_c, bias_c)
        return dh, (dtable_c, dbias_c)

    dh = jnp.zeros_like(h)
    dtables, dbiases = [], []
    if num_full:
        dh, (dt, db) = jax.lax.scan(body, dh, jnp.arange(num_full, dtype=jnp.int32))
        dtables.append(dt.reshape(num_full * chunk, hidden))  # [num_full, C, H] -> rows
        dbiases.append(db.reshape(num_full * chunk))
    if tail:
        start = num_full * chunk
        dh, dt, db = chunk_grads(dh, start + offset, table[start:], bias[start:])
        dtables.append(dt)
        dbiases.append(db)
    return dh, jnp.concatenate(dtables), jnp.concatenate(dbiases)


# ---- The stream, on one device or split over the mesh -------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Stream:
    """Static description of a stream (hashable: the custom_vjp's non-differentiable argument).

    mesh None: the table is whole on each device. Otherwise its rows are split over the mesh's
    `model` axis, rows_per_shard each, and ids >= vocab_size are padding.
    """

    chunk: int
    mesh: jax.sharding.Mesh | None = None
    vocab_size: int | None = None
    rows_per_shard: int | None = None


# ---- Vocabulary-parallel chunked softmax ---------------------------------------------------------
#
# The table's rows are split over the mesh's `model` axis, the predictions over `data`. Each device
# streams its own rows for its own predictions (offset = its model index x rows per shard) and the
# partial statistics are combined across `model` as the comment block above says; the backward
# pass recomputes each device's rows' logits with the global (m, log s), sums dh across `model`
# and its rows' dtable, dbias across `data`. Peak extra memory per device: [N / data, chunk].


def _vp_stats(stream: _Stream, h, table, bias, labels):
    # Per device: h [N/data, H], table [rows/model, H], bias [rows/model], labels [N/data].
    offset = jax.lax.axis_index(MODEL_AXIS) * stream.rows_per_shard
    m, s, tgt, arg = _stream_stats(
        h, table, bias, labels, stream.chunk, offset, limit=stream.vocab_size
    )
    m_all = jax.lax.pmax(m, MODEL_AXIS)  # [N/data]
    s_all = jax.lax.psum(s * jnp.exp(m - m_all), MODEL_AXIS)
    tgt_all = jax.lax.psum(tgt, MODEL_AXIS)  # 0 on every shard but the label's
    # Shards hold increasing ids, so the smallest id among the shards holding the best logit is
    # the global first-index argmax.
    arg_all = jax.lax.pmin(jnp.where(m == m_all, arg, stream.vocab_size), MODEL_AXIS)
    return m_all, jnp.log(s_all), tgt_all, arg_all


def _vp_grads(stream: _Stream, h, table, bias, labels, m, log_s, g_lse, g_tgt):
    offset = jax.lax.axis_index(MODEL_AXIS) * stream.rows_per_shard
    dh, dtable, dbias = _stream_grads(
        h, table, bias, labels, m, log_s, g_lse, g_tgt, stream.chunk, offset, stream.vocab_size
    )
    # dh: every shard's rows contribute to a prediction; dtable: every data shard's predictions
    # contribute to a row.
    return (
        jax.lax.psum(dh, MODEL_AXIS),
        jax.lax.psum(dtable, DATA_AXIS),
        jax.lax.psum(dbias, DATA_AXIS),
    )


_ROWS = P(DATA_AXIS, None)  # [N, H] predictions over data
_VEC = P(DATA_AXIS)  # [N]
_TABLE = P(MODEL_AXIS, None)  # [rows, H] item rows over model
_BIAS = P(MODEL_AXIS)  # [rows]


def _vp_forward(stream: _Stream, h, table, bias, labels):
    return jax.shard_map(
        functools.partial(_vp_stats, stream),
        mesh=stream.mesh,
        in_specs=(_ROWS, _TABLE, _BIAS, _VEC),
        out_specs=(_VEC, _VEC, _VEC, _VEC),
        # The stream's scan carries start as constants that become device-varying; the combined
        # statistics are made identical across `model` by the collectives above.
        check_vma=False,
    )(h, table, bias, labels)


def _vp_backward(stream: _Stream, h, table, bias, labels, m, log_s, g_lse, g_tgt):
    return jax.shard_map(
        functools.partial(_vp_grads, stream),
        mesh=stream.mesh,
        in_specs=(_ROWS, _TABLE, _BIAS, _VEC, _VEC, _VEC, _VEC, _VEC),
        out_specs=(_ROWS, _TABLE, _BIAS),
        check_vma=False,
    )(h, table, bias, labels, m, log_s, g_lse, g_tgt)


# ---- One custom VJP for both ---------------------------------------------------------------------


def _stats(stream: _Stream, h, table, bias, labels):
    """(m, log s, tgt, arg), each [N]: the statistics over the whole (possibly split) table."""
    if stream.mesh is None:
        m, s, tgt, arg = _stream_stats(h, table, bias, labels, stream.chunk)
        return m, jnp.log(s), tgt, arg
    return _vp_forward(stream, h, table, bias, labels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lse_target(
    stream: _Stream, h: jax.Array, table: jax.Array, bias: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    m, log_s, tgt, arg = _stats(stream, h, table, bias, labels)
    return m + log_s, tgt, arg


def _fwd(stream, h, table, bias, labels):
    m, log_s, tgt, arg = _stats(stream, h, table, bias, labels)
    # Residuals are the inputs plus two [N] statistics: no [N, V] logits are kept.
    return (m + log_s, tgt, arg), (h, table, bias, labels, m, log_s)


def _bwd(stream, residuals, cotangents):
    h, table, bias, labels, m, log_s = residuals
    g_lse, g_tgt, _ = cotangents  # the argmax is integer: no gradient
    if stream.mesh is None:
        grads = _stream_grads(h, table, bias, labels, m, log_s, g_lse, g_tgt, stream.chunk)
    else:
        grads = _vp_backward(stream, h, table, bias, labels, m, log_s, g_lse, g_tgt)
    return (*grads, None)


_lse_target.defvjp(_fwd, _bwd)


def _streamed_sums(
    stream: _Stream,
    h: jax.Array,
    table: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
) -> Sums:
    """The sums of a streamed softmax: flattens the predictions, scores them, reshapes back.

    Args:
      stream: the chunk size, and the mesh the table's rows are split over (if they are).
      h: [B, P, H] head features.
      table: [R, H] float32 item embeddings.
      bias: [R] float32.
      labels: [B, P] int target ids.
      weights: [B, P] float; 0 for padded prediction slots.
    """
    batch_shape = labels.shape
    h32 = h.astype(jnp.float32).reshape(-1, h.shape[-1])  # [N, H], N = B * P
    flat_labels = labels.astype(jnp.int32).reshape(-1)  # [N]
    lse, tgt, arg = _lse_target(stream, h32, table, bias, flat_labels)  # [N] each
    nll = (lse - tgt).reshape(batch_shape)
    correct = (arg == flat_labels).reshape(batch_shape)
    return loss_sums(weights, nll, correct)


# ---- The two losses ----------------------------------------------------------------------------


def chunked_cross_entropy(
    h: jax.Array,
    table: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    *,
    chunk_size: int = 8192,
) -> Sums:
    """`masked_cross_entropy(full_logits(h, table, bias), ...)` without the [B, P, V] logits.

    A streaming log-sum-exp over chunks of `chunk_size` items, with a custom VJP whose backward
    pass recomputes each chunk's logits, so that neither pass holds more than [B * P, chunk]
    float32 scores. The same loss, accuracy (argmax with the first-index tie rule) and gradients
    as the full version, softmax over the whole vocabulary included.

    Args:
      h: [B, P, H] head features (any float dtype; scored in float32 like `full_logits`).
      table: [V, H] float32 item embeddings.
      bias: [V] float32.
      labels: [B, P] int target ids.
      weights: [B, P] float; 0 for padded prediction slots.
      chunk_size: items per chunk (clipped to V); the last chunk may be partial.

    Returns:
      A dict of float32 scalars: loss_sum, weight_sum, correct_sum, prediction_count.
    """
    chunk = max(1, min(int(chunk_size), table.shape[0]))
    return _streamed_sums(_Stream(chunk=chunk), h, table, bias, labels, weights)


def vocab_parallel_cross_entropy(
    h: jax.Array,
    table: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    *,
    mesh: jax.sharding.Mesh,
    vocab_size: int | None = None,
    chunk_size: int = 8192,
) -> Sums:
    """`chunked_cross_entropy` of a table whose rows are split over the mesh's `model` axis.

    Args:
      h: [B, P, H] head features; B must divide over the mesh's data axis.
      table: [R, H] float32 item embeddings, R a multiple of the model axis (rows >= vocab_size
        are padding and never scored); split over `model` (it is resharded if it is not).
      bias: [R] float32.
      labels: [B, P] int target ids (< vocab_size).
      weights: [B, P] float; 0 for padded prediction slots.
      mesh: the mesh; its `model` axis splits the rows, its `data` axis the predictions.
      vocab_size: V, the real rows; None = R.
      chunk_size: rows scored at once on each device (clipped to R / model).

    Returns:
      A dict of float32 scalars: loss_sum, weight_sum, correct_sum, prediction_count, equal
      to the unsharded ones.
    """
    rows = table.shape[0]
    num_shards = mesh.shape[MODEL_AXIS]
    if rows % num_shards:
        raise ValueError(
            f"the item table's {rows} rows do not split over mesh.model={num_shards}: pad them "
            "to sharding.padded_vocab_size"
        )
    rows_per_shard = rows // num_shards
    stream = _Stream(
        chunk=max(1, min(int(chunk_size), rows_per_shard)),
        mesh=mesh,
        vocab_size=rows if vocab_size is None else int(vocab_size),
        rows_per_shard=rows_per_shard,
    )
    return _streamed_sums(stream, h, table, bias, labels, weights)
