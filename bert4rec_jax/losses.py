"""Cross-entropy over the item vocabulary at the masked positions.

Every loss returns the same three float32 sums, never a mean, so that a train step can add them
across micro-batches or devices and divide once, and so that variants that never build the
[B, P, V] logits (a chunked softmax over the item table, a sampled softmax) are drop-in
replacements:

    loss_sum     sum over positions of weight * (-log p(label))
    weight_sum   sum of weights (the number of real predictions when weights are 0/1)
    correct_sum  sum of weight * [argmax == label] (masked-item accuracy's numerator)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
      A dict of float32 scalars: loss_sum, weight_sum, correct_sum.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)  # [B, P, V]
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]  # [B, P]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)  # [B, P]
    return {
        # where(): a zero weight must also silence a non-finite nll (e.g. a label out of range).
        "loss_sum": jnp.sum(jnp.where(weights != 0, weights * nll, 0.0)),
        "weight_sum": jnp.sum(weights),
        "correct_sum": jnp.sum(weights * correct),
    }
