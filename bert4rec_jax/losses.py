"""Losses over the item vocabulary at the masked positions: full, chunked and sampled.

Every loss returns the same four float32 sums, never a mean, so that a train step can add them
across micro-batches or devices and divide once, and so that the variants are drop-in
replacements for one another:

    loss_sum     sum over positions of weight * (per-position loss)
    weight_sum   sum of weights (the number of real predictions when weights are 0/1)
    correct_sum  number of real predictions (weight != 0) whose label is the top-scored
                 candidate; unweighted, so that accuracy = correct_sum / prediction_count stays
                 a plain accuracy when some predictions weigh more (`input.mask_last_weight`)
    prediction_count  number of real predictions (weight != 0); equals weight_sum for 0/1 weights

The variants (`LossConfig.type`, `config.loss.type`):

  full             softmax cross-entropy over the [B, P, V] logits (`masked_cross_entropy`); the
                   logits take B * P * V * 4 bytes (41 GB at 1M items and ML-1m's batch).
  chunked          the same loss, accuracy and gradients, streamed over chunks of the item table
                   (`chunked_cross_entropy`): peak extra memory O(B * P * chunk), not O(V).
  sampled_softmax  softmax over the label and N shared negatives with the logQ correction
                   (`sampled_softmax_cross_entropy`); an estimate of the full loss, O(B * P * N).
  gbce             gSASRec's generalised binary cross-entropy over the same negatives
                   (`gbce_loss`); calibrated towards the full-softmax model's probabilities.
  bce              the original SASRec's loss: binary cross-entropy of the label against ONE
                   uniform negative drawn per prediction (`bce_loss`); the published baseline.
  auto             chunked when the vocabulary exceeds `auto_chunk_above`, full otherwise.

`cloze_loss(loss_config, h, table, bias, labels, weights, key=..., item_counts=...)` is the one
entry point the train step calls, with the head features h [B, P, H] (the model's
`predict_hidden`) and the tied output layer (item table [V, H], bias [V]).

Vocabulary-parallel: when the table's rows are split over the mesh's `model` axis (`mesh=` with
model > 1; rows padded to a multiple of the axis, see `sharding.py`), "chunked" runs the stream
on each shard's own rows and combines the partial statistics across the axis
(`vocab_parallel_cross_entropy`, a shard_map), and "full" lets XLA partition the [B, P, V] logits
over the axis; padding rows are masked out of both. Loss, accuracy and gradients are those of the
unsharded table.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from bert4rec_jax.sharding import DATA_AXIS, MODEL_AXIS

if TYPE_CHECKING:
    import ml_collections

LOSS_TYPES = ("auto", "full", "chunked", "sampled_softmax", "gbce", "bce")
PROPOSALS = ("uniform", "popularity")
Sums = dict[str, jax.Array]
# The logit of a padding row of a sharded table: finite (a shard of padding only must not give
# exp(-inf - -inf) = NaN in the stream), and exp(it - any real logit) is exactly 0.
_PADDING_LOGIT = -1e30


# ---- Config -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Which loss the train step uses; built once from `config.loss`.

    Attributes:
      type: one of LOSS_TYPES (see the module docstring).
      auto_chunk_above: with type="auto", vocabularies larger than this use the chunked loss,
        smaller ones the full one.
      chunk_size: items per chunk of the chunked loss (its [B*P, chunk] logits are the peak).
      num_negatives: N, negatives drawn per step and shared by every prediction of the batch
        (sampled_softmax and gbce; bce draws one per prediction instead).
      proposal: the distribution negatives are drawn from: "uniform" over the items, or
        "popularity" (proportional to the item counts the step is given).
      gbce_t: gBCE's calibration parameter t in [0, 1]; 0 = plain BCE, 1 = fully calibrated.
    """

    type: str = "auto"
    auto_chunk_above: int = 10_000
    chunk_size: int = 8192
    num_negatives: int = 1024
    proposal: str = "uniform"
    gbce_t: float = 0.75

    def __post_init__(self):
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"loss.{field}={getattr(self, field)!r}: {why}")

        if self.type not in LOSS_TYPES:
            raise bad("type", f"expected one of {LOSS_TYPES}")
        if self.auto_chunk_above < 0:
            raise bad("auto_chunk_above", "must be >= 0")
        if self.chunk_size <= 0:
            raise bad("chunk_size", "must be positive")
        if self.num_negatives <= 0:
            raise bad("num_negatives", "must be positive")
        if self.proposal not in PROPOSALS:
            raise bad("proposal", f"expected one of {PROPOSALS}")
        if not 0.0 <= self.gbce_t <= 1.0:
            raise bad("gbce_t", "must be in [0, 1]")
        if self.type in ("gbce", "bce") and self.proposal != "uniform":
            # gBCE's beta is derived for uniformly drawn negatives (alpha = N / (|I| - 1)); the
            # original SASRec's BCE draws its negative uniformly too.
            raise bad("proposal", f'loss.type="{self.type}" assumes uniform negatives')

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> LossConfig:
        """Reads `config.loss.*` (absent in configs older than the block: the defaults)."""
        loss = config.get("loss")
        if loss is None:
            return cls()
        return cls(
            type=str(loss.type),
            auto_chunk_above=int(loss.auto_chunk_above),
            chunk_size=int(loss.chunk_size),
            num_negatives=int(loss.num_negatives),
            proposal=str(loss.proposal),
            gbce_t=float(loss.gbce_t),
        )

    def resolve(self, vocab_size: int) -> str:
        """The concrete loss for this vocabulary: "auto" becomes "chunked" or "full"."""
        if self.type == "auto":
            return "chunked" if vocab_size > self.auto_chunk_above else "full"
        return self.type

    def check(self, vocab_size: int, item_counts: np.ndarray | None = None) -> None:
        """Fails, naming the field, on what only the data set can reveal (call before compiling).

        Args:
          vocab_size: num_items + 2.
          item_counts: what the step will pass as `item_counts` (see `prepare_item_counts`).
        """
        kind = self.resolve(vocab_size)
        num_items = vocab_size - 2
        if kind == "gbce" and self.num_negatives > num_items - 1:
            raise ValueError(
                f"loss.num_negatives={self.num_negatives}: gbce needs at most num_items - 1 = "
                f"{num_items - 1} negatives (its alpha = N / (num_items - 1) must be <= 1)"
            )
        if kind in ("sampled_softmax", "gbce") and self.proposal == "popularity":
            if item_counts is None:
                raise ValueError(
                    'loss.proposal="popularity" needs the item counts (e.g. corpus.popularity)'
                )
            if np.shape(item_counts) != (vocab_size,):
                raise ValueError(
                    f"item_counts has shape {np.shape(item_counts)}, expected ({vocab_size},); "
                    "build it with losses.prepare_item_counts"
                )


def prepare_item_counts(counts: np.ndarray, vocab_size: int) -> np.ndarray:
    """Interaction counts per id, as the popularity proposal wants them.

    Args:
      counts: [num_items + 1] (`Corpus.popularity`: [0] is padding) or [vocab_size] counts.
      vocab_size: num_items + 2.

    Returns:
      int32 [vocab_size]; padding and [MASK] get 0, so they are never drawn.
    """
    counts = np.asarray(counts)
    if counts.ndim != 1 or len(counts) not in (vocab_size - 1, vocab_size):
        raise ValueError(
            f"item counts of shape {counts.shape}: expected [num_items + 1] = [{vocab_size - 1}] "
            f"or [vocab_size] = [{vocab_size}]"
        )
    if (counts < 0).any():
        raise ValueError("item counts must be non-negative")
    out = np.zeros(vocab_size, np.int64)
    out[1 : len(counts)] = counts[1:]
    out[vocab_size - 1] = 0  # [MASK]
    total = int(out.sum())
    # Drawing is exact in int32 (an integer in [0, total) against the cumulative counts).
    if not 0 < total < 2**31:
        raise ValueError(
            f"item counts sum to {total}; the popularity proposal needs 0 < sum < 2**31"
        )
    return out.astype(np.int32)


# ---- The entry point ----------------------------------------------------------------------------


def cloze_loss(
    loss_config: LossConfig,
    h: jax.Array,
    table: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    *,
    key: jax.Array | None = None,
    item_counts: jax.Array | None = None,
    vocab_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Sums:
    """The configured loss of the masked-item predictions.

    Args:
      loss_config: which loss.
      h: [B, P, H] head features (compute dtype, e.g. bfloat16).
      table: [V, H] float32 item embeddings (the tied output layer).
      bias: [V] float32 output bias.
      labels: [B, P] int target ids.
      weights: [B, P] float; 0 for padded prediction slots.
      key: PRNG key for the negatives of the sampled losses (a fresh one every step).
      item_counts: int32 [V] from `prepare_item_counts`; needed by proposal="popularity".
      vocab_size: V, the real rows of `table`; rows past it are padding of a table sharded over
        `mesh` and are never scored. None = every row is real.
      mesh: the mesh whose `model` axis splits the rows of `table` and `bias`; None or
        model = 1: the table is not split.

    Returns:
      A dict of float32 scalars: loss_sum, weight_sum, correct_sum, prediction_count.
    """
    rows = table.shape[0]
    vocab_size = rows if vocab_size is None else int(vocab_size)
    if not 3 <= vocab_size <= rows:
        raise ValueError(f"vocab_size={vocab_size} must be in [3, rows of the table = {rows}]")
    sharded = mesh is not None and mesh.shape[MODEL_AXIS] > 1
    kind = loss_config.resolve(vocab_size)
    if kind == "full":
        logits = full_logits(h, table, bias)  # [B, P, rows]
        if sharded:  # each device holds its predictions' scores of its own rows only
            logits = jax.lax.with_sharding_constraint(
                logits, jax.sharding.NamedSharding(mesh, P(DATA_AXIS, None, MODEL_AXIS))
            )
        if rows > vocab_size:
            logits = jnp.where(jnp.arange(rows) < vocab_size, logits, _PADDING_LOGIT)
        return masked_cross_entropy(logits, labels, weights)
    if kind == "chunked":
        if sharded:
            return vocab_parallel_cross_entropy(
                h,
                table,
                bias,
                labels,
                weights,
                mesh=mesh,
                vocab_size=vocab_size,
                chunk_size=loss_config.chunk_size,
            )
        if rows > vocab_size:  # padded for a mesh, but not split: drop the padding
            table, bias = table[:vocab_size], bias[:vocab_size]
        return chunked_cross_entropy(
            h, table, bias, labels, weights, chunk_size=loss_config.chunk_size
        )
    if key is None:
        raise ValueError(f'loss.type="{kind}" draws negatives: cloze_loss needs a key')
    if kind == "bce":
        # One negative per prediction, uniform over the items 1..num_items.
        negatives = jax.random.randint(key, labels.shape, 1, vocab_size - 1, dtype=jnp.int32)
        return bce_loss(h, table, bias, labels, weights, negatives)
    negatives, neg_log_q, label_log_q = draw_negatives(
        key,
        loss_config.num_negatives,
        labels,
        vocab_size=vocab_size,
        proposal=loss_config.proposal,
        item_counts=item_counts,
    )
    if kind == "sampled_softmax":
        return sampled_softmax_cross_entropy(
            h, table, bias, labels, weights, negatives, neg_log_q, label_log_q
        )
    beta = gbce_beta(loss_config.gbce_t, loss_config.num_negatives, num_items=vocab_size - 2)
    return gbce_loss(h, table, bias, labels, weights, negatives, beta=beta)


def _sums(
    weights: jax.Array, per_position_loss: jax.Array, correct: jax.Array
) -> dict[str, jax.Array]:
    """The four sums from [B, P] weights, losses and 0/1 correctness."""
    weights = weights.astype(jnp.float32)
    real = weights != 0  # [B, P]
    return {
        # where(): a zero weight must also silence a non-finite loss (e.g. a label out of range).
        "loss_sum": jnp.sum(jnp.where(real, weights * per_position_loss, 0.0)),
        "weight_sum": jnp.sum(weights),
        # Counts, not weighted: the reported accuracy is over predictions, whatever they weigh.
        "correct_sum": jnp.sum(real & correct.astype(bool), dtype=jnp.float32),
        "prediction_count": jnp.sum(real, dtype=jnp.float32),
    }


# ---- Full softmax -------------------------------------------------------------------------------


def full_logits(h: jax.Array, table: jax.Array, bias: jax.Array) -> jax.Array:
    """[..., V] float32 scores of every item: `models.BERT4Rec.item_scores(h)` with the table."""
    return jnp.einsum("...h,vh->...v", h.astype(jnp.float32), table) + bias


def masked_cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> dict[str, jax.Array]:
    """Weighted softmax cross-entropy over the full vocabulary.

    Like the original code, the softmax runs over the whole table, padding (0) and [MASK] columns
    included: they are never labels, so the model learns to push them down; excluding them would
    change the normaliser and the reported loss.

    Args:
      logits: [B, P, V] scores (any float dtype; computed in float32).
      labels: [B, P] int target ids.
      weights: [B, P] float; 0 for padded prediction slots.

    Returns:
      A dict of float32 scalars: loss_sum, weight_sum, correct_sum, prediction_count.
    """
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, P, V]
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]  # [B, P]
    correct = jnp.argmax(logits, axis=-1) == labels  # [B, P]
    return _sums(weights, nll, correct)


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
    """x [N, C] with the columns of global ids start + c >= limit set to _PADDING_LOGIT."""
    if limit is None:
        return x
    ids = start + jnp.arange(x.shape[-1], dtype=jnp.int32)  # [C]
    return jnp.where(ids < limit, x, _PADDING_LOGIT)


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
      limit: global ids >= limit are padding rows, scored _PADDING_LOGIT; None = none.

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


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked_lse_target(
    h: jax.Array, table: jax.Array, bias: jax.Array, labels: jax.Array, chunk: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    m, s, tgt, arg = _stream_stats(h, table, bias, labels, chunk)
    return m + jnp.log(s), tgt, arg


def _chunked_fwd(h, table, bias, labels, chunk):
    m, s, tgt, arg = _stream_stats(h, table, bias, labels, chunk)
    log_s = jnp.log(s)
    # Residuals are the inputs plus two [N] statistics: no [N, V] logits are kept.
    return (m + log_s, tgt, arg), (h, table, bias, labels, m, log_s)


def _chunked_bwd(chunk, residuals, cotangents):
    h, table, bias, labels, m, log_s = residuals
    g_lse, g_tgt, _ = cotangents  # the argmax is integer: no gradient
    dh, dtable, dbias = _stream_grads(h, table, bias, labels, m, log_s, g_lse, g_tgt, chunk)
    return dh, dtable, dbias, None


_chunked_lse_target.defvjp(_chunked_fwd, _chunked_bwd)


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
    return _streamed_sums(
        lambda h32, flat_labels: _chunked_lse_target(h32, table, bias, flat_labels, chunk),
        h,
        labels,
        weights,
    )


def _streamed_sums(
    lse_target: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    h: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
) -> Sums:
    """The sums of a streamed softmax: flattens the predictions, scores them, reshapes back.

    Args:
      lse_target: (h [N, H] float32, labels [N] int32) -> (lse, target logit, argmax), each [N];
        the chunked or the vocabulary-parallel stream.
      h: [B, P, H] head features.
      labels: [B, P] int target ids.
      weights: [B, P] float; 0 for padded prediction slots.
    """
    batch_shape = labels.shape
    h32 = h.astype(jnp.float32).reshape(-1, h.shape[-1])  # [N, H], N = B * P
    flat_labels = labels.astype(jnp.int32).reshape(-1)  # [N]
    lse, tgt, arg = lse_target(h32, flat_labels)  # [N] each
    nll = (lse - tgt).reshape(batch_shape)
    correct = (arg == flat_labels).reshape(batch_shape)
    return _sums(weights, nll, correct)


# ---- Vocabulary-parallel chunked softmax ---------------------------------------------------------
#
# The table's rows are split over the mesh's `model` axis, the predictions over `data`. Each device
# streams its own rows for its own predictions (offset = its model index x rows per shard) and the
# partial statistics are combined across `model` as the comment block above says; the backward
# pass recomputes each device's rows' logits with the global (m, log s), sums dh across `model`
# and its rows' dtable, dbias across `data`. Peak extra memory per device: [N / data, chunk].


@dataclasses.dataclass(frozen=True)
class _VocabShards:
    """Static description of a sharded table (hashable: a custom_vjp non-differentiable arg)."""

    mesh: jax.sharding.Mesh
    vocab_size: int  # real rows; the rest is padding
    rows_per_shard: int
    chunk: int


def _vp_stats(shards: _VocabShards, h, table, bias, labels):
    # Per device: h [N/data, H], table [rows/model, H], bias [rows/model], labels [N/data].
    offset = jax.lax.axis_index(MODEL_AXIS) * shards.rows_per_shard
    m, s, tgt, arg = _stream_stats(
        h, table, bias, labels, shards.chunk, offset, limit=shards.vocab_size
    )
    m_all = jax.lax.pmax(m, MODEL_AXIS)  # [N/data]
    s_all = jax.lax.psum(s * jnp.exp(m - m_all), MODEL_AXIS)
    tgt_all = jax.lax.psum(tgt, MODEL_AXIS)  # 0 on every shard but the label's
    # Shards hold increasing ids, so the smallest id among the shards holding the best logit is
    # the global first-index argmax.
    arg_all = jax.lax.pmin(jnp.where(m == m_all, arg, shards.vocab_size), MODEL_AXIS)
    return m_all, jnp.log(s_all), tgt_all, arg_all


def _vp_grads(shards: _VocabShards, h, table, bias, labels, m, log_s, g_lse, g_tgt):
    offset = jax.lax.axis_index(MODEL_AXIS) * shards.rows_per_shard
    dh, dtable, dbias = _stream_grads(
        h, table, bias, labels, m, log_s, g_lse, g_tgt, shards.chunk, offset, shards.vocab_size
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


def _vp_forward(shards: _VocabShards, h, table, bias, labels):
    return jax.shard_map(
        functools.partial(_vp_stats, shards),
        mesh=shards.mesh,
        in_specs=(_ROWS, _TABLE, _BIAS, _VEC),
        out_specs=(_VEC, _VEC, _VEC, _VEC),
        # The stream's scan carries start as constants that become device-varying; the combined
        # statistics are made identical across `model` by the collectives above.
        check_vma=False,
    )(h, table, bias, labels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _vp_lse_target(shards: _VocabShards, h, table, bias, labels):
    m, log_s, tgt, arg = _vp_forward(shards, h, table, bias, labels)
    return m + log_s, tgt, arg


def _vp_fwd(shards, h, table, bias, labels):
    m, log_s, tgt, arg = _vp_forward(shards, h, table, bias, labels)
    return (m + log_s, tgt, arg), (h, table, bias, labels, m, log_s)


def _vp_bwd(shards, residuals, cotangents):
    h, table, bias, labels, m, log_s = residuals
    g_lse, g_tgt, _ = cotangents
    dh, dtable, dbias = jax.shard_map(
        functools.partial(_vp_grads, shards),
        mesh=shards.mesh,
        in_specs=(_ROWS, _TABLE, _BIAS, _VEC, _VEC, _VEC, _VEC, _VEC),
        out_specs=(_ROWS, _TABLE, _BIAS),
        check_vma=False,
    )(h, table, bias, labels, m, log_s, g_lse, g_tgt)
    return dh, dtable, dbias, None


_vp_lse_target.defvjp(_vp_fwd, _vp_bwd)


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
    shards = _VocabShards(
        mesh=mesh,
        vocab_size=rows if vocab_size is None else int(vocab_size),
        rows_per_shard=rows_per_shard,
        chunk=max(1, min(int(chunk_size), rows_per_shard)),
    )
    return _streamed_sums(
        lambda h32, flat_labels: _vp_lse_target(shards, h32, table, bias, flat_labels),
        h,
        labels,
        weights,
    )


# ---- Sampled losses -----------------------------------------------------------------------------


def draw_negatives(
    key: jax.Array,
    num: int,
    labels: jax.Array,
    *,
    vocab_size: int,
    proposal: str,
    item_counts: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draws `num` negatives (with replacement) shared by every prediction of the batch.

    Args:
      key: PRNG key.
      num: N.
      labels: [B, P] int labels (their proposal log-probabilities are returned too).
      vocab_size: V = num_items + 2; only items 1..num_items are drawn.
      proposal: "uniform" or "popularity".
      item_counts: int32 [V] (`prepare_item_counts`), for "popularity".

    Returns:
      negatives int32 [N], log Q of the negatives float32 [N], log Q of the labels [B, P].
    """
    labels = labels.astype(jnp.int32)
    if proposal == "uniform":
        negatives = jax.random.randint(key, (num,), 1, vocab_size - 1, dtype=jnp.int32)
        log_q = -jnp.log(jnp.float32(vocab_size - 2))
        return (
            negatives,
            jnp.full((num,), log_q, jnp.float32),
            jnp.full(labels.shape, log_q, jnp.float32),
        )
    if proposal != "popularity":
        raise ValueError(f"loss.proposal={proposal!r}: expected one of {PROPOSALS}")
    if item_counts is None or item_counts.shape != (vocab_size,):
        raise ValueError(
            f'loss.proposal="popularity" needs item_counts of shape ({vocab_size},) '
            "(losses.prepare_item_counts)"
        )
    counts = item_counts.astype(jnp.int32)
    cumulative = jnp.cumsum(counts)  # [V]; exact: prepare_item_counts keeps the sum < 2^31
    total = cumulative[-1]
    # Inverse CDF in integers: item i owns [cum[i-1], cum[i]); zero-count ids own nothing.
    r = jax.random.randint(key, (num,), 0, total, dtype=jnp.int32)
    negatives = jnp.searchsorted(cumulative, r, side="right").astype(jnp.int32)
    log_total = jnp.log(total.astype(jnp.float32))
    neg_log_q = jnp.log(counts[negatives].astype(jnp.float32)) - log_total
    # A label is a training item, so its count is >= 1; the floor only keeps padded slots
    # (label 0, weight 0) finite.
    label_counts = jnp.maximum(counts[labels], 1).astype(jnp.float32)
    return negatives, neg_log_q, jnp.log(label_counts) - log_total


def _sampled_scores(
    h: jax.Array, table: jax.Array, bias: jax.Array, labels: jax.Array, negatives: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Label scores [B, P], negative scores [B, P, N] and accidental hits [B, P, N]."""
    h32 = h.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    negatives = negatives.astype(jnp.int32)
    pos = _own_scores(h32, table, bias, labels)  # [B, P]
    neg = jnp.einsum("bph,nh->bpn", h32, table[negatives]) + bias[negatives]  # [B, P, N]
    hits = labels[..., None] == negatives  # [B, P, N]
    return pos, neg, hits


def _own_scores(h32: jax.Array, table: jax.Array, bias: jax.Array, ids: jax.Array) -> jax.Array:
    """[B, P] float32: each prediction's score of its own item, ids int32 [B, P]."""
    return jnp.einsum("bph,bph->bp", h32, table[ids]) + bias[ids]


def _sampled_correct(pos: jax.Array, neg: jax.Array, hits: jax.Array) -> jax.Array:
    # The label outscores every drawn negative (raw scores, ties against the model as in
    # evaluation): accuracy among the sampled candidates, not over the whole catalogue.
    best_neg = jnp.max(jnp.where(hits, -jnp.inf, neg), axis=-1)  # [B, P]
    return pos > best_neg


def sampled_softmax_cross_entropy(
    h: jax.Array,
    table: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    negatives: jax.Array,
    neg_log_q: jax.Array | None = None,
    label_log_q: jax.Array | None = None,
) -> Sums:
    """Softmax cross-entropy over {label} + N shared negatives, with the logQ correction.

    Every candidate's score s is corrected to s - log Q(item) (Bengio & Senecal 2008; Jean et al.
    2015; Yi et al. 2019), which makes the sampled softmax an estimate of the full one whatever
    the proposal Q. A negative equal to the row's label (an accidental hit) is removed. With every
    id of the vocabulary as the negatives and no correction this is exactly the full loss.

    Args:
      h: [B, P, H] head features.
      table: [V, H] float32.
      bias: [V] float32.
      labels: [B, P] int.
      weights: [B, P] float.
      negatives: [N] int ids, shared by every row.
      neg_log_q: [N] log proposal probabilities of the negatives; None = no correction.
      label_log_q: [B, P] the same for the labels; None = no correction.

    Returns:
      loss_sum, weight_sum, correct_sum and prediction_count, correct_sum over the sampled
      candidates: the label counts as correct when its raw score beats every drawn negative.
    """
    pos, neg, hits = _sampled_scores(h, table, bias, labels, negatives)
    pos_c = pos if label_log_q is None else pos - label_log_q
    neg_c = neg if neg_log_q is None else neg - neg_log_q
    neg_c = jnp.where(hits, -jnp.inf, neg_c)
    logits = jnp.concatenate([pos_c[..., None], neg_c], axis=-1)  # [B, P, 1 + N]
    nll = jax.nn.logsumexp(logits, axis=-1) - pos_c  # [B, P]
    return _sums(weights, nll, _sampled_correct(pos, neg, hits))


def gbce_beta(t: float, num_negatives: int, num_items: int) -> float:
    """gSASRec's beta = alpha (t (1 - 1/alpha) + 1/alpha) with alpha = N / (num_items - 1).

    Equivalently beta = 1 - t (1 - alpha): t = 0 gives plain BCE (beta = 1), t = 1 gives
    beta = alpha.
    """
    alpha = num_negatives / (num_items - 1)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(
            f"loss.num_negatives={num_negatives}: gbce needs 0 < N <= num_items - 1 "
            f"= {num_items - 1}"
        )
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(
    h: jax.Array,
    table: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    negatives: jax.Array,
    *,
    beta: float,
) -> Sums:
    """Generalised binary cross-entropy (Petrov & Macdonald, gSASRec, RecSys 2023).

    Per prediction, with s+ the label's score and I_k^- the k drawn negatives (the paper's gBCE
    definition, Section 4, as in its released code's README):

        L = -1 / (|I_k^-| + 1) * ( log sigma(s+)^beta + sum_{i in I_k^-} log(1 - sigma(s_i)) )

    with beta from `gbce_beta`; -log sigma(x) = softplus(-x), -log(1 - sigma(x)) = softplus(x).
    The paper draws k negatives per positive uniformly; here the N negatives are shared by the
    batch (each prediction still meets N uniform negatives). Accidental hits (a negative equal to
    the label) are left out of the sum; the normaliser stays N + 1.

    Args:
      h: [B, P, H] head features.
      table: [V, H] float32.
      bias: [V] float32.
      labels: [B, P] int.
      weights: [B, P] float.
      negatives: [N] int ids.
      beta: the positive term's exponent.

    Returns:
      loss_sum, weight_sum, correct_sum and prediction_count (over the sampled candidates, as in
      `sampled_softmax_cross_entropy`).
    """
    pos, neg, hits = _sampled_scores(h, table, bias, labels, negatives)
    neg_term = jnp.sum(jnp.where(hits, 0.0, jax.nn.softplus(neg)), axis=-1)  # [B, P]
    loss = (beta * jax.nn.softplus(-pos) + neg_term) / (negatives.shape[0] + 1)
    return _sums(weights, loss, _sampled_correct(pos, neg, hits))


def bce_loss(
    h: jax.Array,
    table: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    negatives: jax.Array,
) -> Sums:
    """The original SASRec's binary cross-entropy (Kang & McAuley, ICDM 2018), one negative each.

    Per prediction, with s+ the label's score and s- the score of its own drawn negative:

        L = -log sigma(s+) - log(1 - sigma(s-)) = softplus(-s+) + softplus(s-)

    The original draws the negative among items the user has not interacted with; here it is
    uniform over the catalogue and only a negative equal to the label (an accidental hit) is
    dropped (its term is 0), which differs for the few items of a user's history drawn by chance.

    Args:
      h: [B, P, H] head features.
      table: [V, H] float32.
      bias: [V] float32.
      labels: [B, P] int.
      weights: [B, P] float.
      negatives: [B, P] int ids, one per prediction.

    Returns:
      loss_sum, weight_sum, correct_sum and prediction_count; correct = the label outscores its
      negative (an accidental hit counts as correct).
    """
    h32 = h.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    negatives = negatives.astype(jnp.int32)
    pos = _own_scores(h32, table, bias, labels)  # [B, P]
    neg = _own_scores(h32, table, bias, negatives)  # [B, P]
    hit = negatives == labels  # [B, P]
    loss = jax.nn.softplus(-pos) + jnp.where(hit, 0.0, jax.nn.softplus(neg))
    return _sums(weights, loss, hit | (pos > neg))
