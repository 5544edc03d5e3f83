"""The sampled losses: negatives drawn from a proposal instead of the whole catalogue.

Sampled softmax (logQ-corrected) and gSASRec's gBCE over N negatives shared by the batch, and the
original SASRec's BCE over one uniform negative per prediction.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from bert4rec_jax.losses.core import PROPOSALS, Sums, loss_sums


def uniform_items(key: jax.Array, shape: tuple[int, ...], vocab_size: int) -> jax.Array:
    """int32 ids of `shape` drawn uniformly (with replacement) from the items 1..vocab_size - 2.

    The one uniform draw of the sampled losses: padding (0) and [MASK] (vocab_size - 1) are
    never drawn.
    """
    return jax.random.randint(key, shape, 1, vocab_size - 1, dtype=jnp.int32)


def uniform_items_except(key: jax.Array, labels: jax.Array, vocab_size: int) -> jax.Array:
    """int32, labels' shape: per label, an item drawn uniformly from 1..vocab_size - 2 without it.

    Exact and in one draw: r uniform over the num_items - 1 values 1..num_items - 1, moved up by
    one where r >= label, hits every item but the label with equal chance (the original SASRec's
    negative is never the positive either). A padding label (0) gets some item; its weight is 0.
    """
    labels = labels.astype(jnp.int32)
    r = jax.random.randint(key, labels.shape, 1, vocab_size - 2, dtype=jnp.int32)
    return r + (r >= labels).astype(jnp.int32)


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
        negatives = uniform_items(key, (num,), vocab_size)
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
    return loss_sums(weights, nll, _sampled_correct(pos, neg, hits))


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


def gbce_shift(beta: float, num_negatives: int) -> float:
    """log(beta / N): the one constant score that minimises gBCE, beta softplus(-s) + N softplus(s).

    At initialisation every score is about 0, far above it (sigma(0) = 1/2 for each of N
    negatives against a positive weighted beta). Unshifted, the first steps must push every
    score of the catalogue down to it (presumably through the encoder's h.e, since a per-item
    bias moves only about one learning rate per Adam step). On ML-100K (N = 256, t = 0.75,
    s* = -6.6) SASRec's training loss then sits at the constant solution's value (~0.0107),
    gradient norm ~0.001, and the ranking stays at popularity (also with negatives drawn per
    prediction, as gSASRec does, at step 100). Adding s* to every score inside the loss starts
    training at that solution, the way a classifier's bias is initialised at the class prior;
    a constant changes no ranking.
    """
    return math.log(beta / num_negatives)


def gbce_loss(
    h: jax.Array,
    table: jax.Array,
    bias: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    negatives: jax.Array,
    *,
    beta: float,
    shift: float = 0.0,
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
      shift: a constant added to every score inside the loss (`gbce_shift`); it leaves the
        ranking, and so evaluation, unchanged.

    Returns:
      loss_sum, weight_sum, correct_sum and prediction_count (over the sampled candidates, as in
      `sampled_softmax_cross_entropy`).
    """
    pos, neg, hits = _sampled_scores(h, table, bias, labels, negatives)
    pos, neg = pos + shift, neg + shift
    neg_term = jnp.sum(jnp.where(hits, 0.0, jax.nn.softplus(neg)), axis=-1)  # [B, P]
    loss = (beta * jax.nn.softplus(-pos) + neg_term) / (negatives.shape[0] + 1)
    return loss_sums(weights, loss, _sampled_correct(pos, neg, hits))


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

    The original draws the negative among items the user has not interacted with; `cloze_loss`
    draws it uniformly among all items but the label (`uniform_items_except`), so it may be
    another item of the user's history (ML-100K: ~6% of draws). A negative equal to the label
    (passed in by another caller) is dropped: its term is 0.

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
    return loss_sums(weights, loss, hit | (pos > neg))
