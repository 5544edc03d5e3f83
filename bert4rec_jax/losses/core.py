"""What every loss shares: the config, the four sums a loss returns, and the full softmax.

The full softmax over the [B, P, V] logits is the reference the streamed (`streamed.py`) and
sampled (`sampled.py`) losses are measured against; docs/training.md, "Large catalogues", says
when to use which.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# full: softmax over the [B, P, V] logits; chunked: the same, streamed over chunks of the table;
# sampled_softmax / gbce: over N shared negatives; bce: one uniform negative per prediction (the
# original SASRec's); auto: chunked above `auto_chunk_above` items, full below.
LOSS_TYPES = ("auto", "full", "chunked", "sampled_softmax", "gbce", "bce")
PROPOSALS = ("uniform", "popularity")
Sums = dict[str, jax.Array]
# The logit of a padding row of a sharded table: finite (a shard of padding only must not give
# exp(-inf - -inf) = NaN in the stream), and exp(it - any real logit) is exactly 0.
PADDING_LOGIT = -1e30


# ---- Config -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Which loss the train step uses; built once from `config.loss`.

    Attributes:
      type: one of LOSS_TYPES (see the comment above it).
      auto_chunk_above: with type="auto", vocabularies larger than this use the chunked loss,
        smaller ones the full one.
      chunk_size: items per chunk of the chunked loss (its [B*P, chunk] logits are the peak).
      num_negatives: N, negatives drawn per step and shared by every prediction of the batch
        (sampled_softmax and gbce; bce draws one per prediction instead).
      proposal: the distribution negatives are drawn from: "uniform" over the items, or
        "popularity" (proportional to the item counts the step is given).
      gbce_t: gBCE's calibration parameter t in [0, 1]; 0 = plain BCE, 1 = fully calibrated.
      gbce_shift: gbce adds `sampled.gbce_shift` = log(beta / N) to every score inside the loss,
        so training starts at the best constant scores instead of having to learn them (without
        it gbce stays at the popularity ranking on ML-100K). False keeps the unshifted loss.
    """

    type: str = "auto"
    auto_chunk_above: int = 10_000
    chunk_size: int = 8192
    num_negatives: int = 1024
    proposal: str = "uniform"
    gbce_t: float = 0.75
    gbce_shift: bool = False

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
        if kind == "bce" and num_items < 2:
            raise ValueError(
                'loss.type="bce" draws a negative other than the label: it needs '
                f"at least 2 items, the data set has {num_items}"
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


# ---- The four sums ------------------------------------------------------------------------------


def loss_sums(weights: jax.Array, per_position_loss: jax.Array, correct: jax.Array) -> Sums:
    """The four float32 sums every loss returns, from [B, P] weights, losses and 0/1 correctness.

    Sums, never means, so that a train step can add them across micro-batches or devices and
    divide once, and so that the losses are drop-in replacements for one another:

      loss_sum          sum over positions of weight * (per-position loss)
      weight_sum        sum of weights (the number of real predictions when weights are 0/1)
      correct_sum       real predictions (weight != 0) whose label is the top-scored candidate;
                        unweighted, so that accuracy = correct_sum / prediction_count stays a
                        plain accuracy when some predictions weigh more (`input.mask_last_weight`)
      prediction_count  real predictions (weight != 0); equals weight_sum for 0/1 weights
    """
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


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> Sums:
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
    return loss_sums(weights, nll, correct)
