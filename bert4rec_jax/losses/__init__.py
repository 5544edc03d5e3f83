"""Losses over the item vocabulary at the masked positions, and `cloze_loss`, the one the config
picks. Every loss returns the same four sums (`core.loss_sums`): `core` holds the config and the
full softmax, `streamed` the exact softmax without the [B, P, V] logits, `sampled` the losses
over drawn negatives. docs/training.md, "Large catalogues", says when to use which.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from bert4rec_jax.losses.core import (
    LOSS_TYPES,
    PADDING_LOGIT,
    PROPOSALS,
    LossConfig,
    Sums,
    full_logits,
    loss_sums,
    masked_cross_entropy,
    prepare_item_counts,
)
from bert4rec_jax.losses.sampled import (
    bce_loss,
    draw_negatives,
    gbce_beta,
    gbce_loss,
    gbce_shift,
    sampled_softmax_cross_entropy,
    uniform_items,
    uniform_items_except,
)
from bert4rec_jax.losses.streamed import chunked_cross_entropy, vocab_parallel_cross_entropy
from bert4rec_jax.sharding import DATA_AXIS, MODEL_AXIS

__all__ = [
    "LOSS_TYPES",
    "PROPOSALS",
    "LossConfig",
    "Sums",
    "bce_loss",
    "chunked_cross_entropy",
    "cloze_loss",
    "draw_negatives",
    "full_logits",
    "gbce_beta",
    "gbce_loss",
    "gbce_shift",
    "loss_sums",
    "masked_cross_entropy",
    "prepare_item_counts",
    "sampled_softmax_cross_entropy",
    "uniform_items",
    "uniform_items_except",
    "vocab_parallel_cross_entropy",
]


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
            logits = jnp.where(jnp.arange(rows) < vocab_size, logits, PADDING_LOGIT)
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
        # One negative per prediction, uniform over the items 1..num_items but its label.
        negatives = uniform_items_except(key, labels, vocab_size)
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
    shift = gbce_shift(beta, loss_config.num_negatives) if loss_config.gbce_shift else 0.0
    return gbce_loss(h, table, bias, labels, weights, negatives, beta=beta, shift=shift)
