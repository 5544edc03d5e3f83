"""Tests for bert4rec_jax.losses.sampled: sampled softmax with logQ, gBCE and its shift, the
proposal's draws."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import B, H, P, V, full_fn, head_batch, loss_and_grads

from bert4rec_jax import losses
from bert4rec_jax.config import RunConfig
from configs import default as default_config


def test_sampled_softmax_over_every_item_without_correction_is_the_full_loss():
    h, table, bias, labels, weights = head_batch(seed=2)
    grads_full, sums_full = loss_and_grads(full_fn, h, table, bias, labels, weights)
    everything = jnp.arange(V)  # the labels themselves are among them: accidental hits, removed

    def sampled(h, table, bias, labels, weights):
        return losses.sampled_softmax_cross_entropy(h, table, bias, labels, weights, everything)

    def sampled_uniform(h, table, bias, labels, weights):
        # A uniform proposal's correction is the same constant for every candidate: no change.
        log_q = jnp.float32(-np.log(V))
        return losses.sampled_softmax_cross_entropy(
            h, table, bias, labels, weights, everything, jnp.full(V, log_q), jnp.full((B, P), log_q)
        )

    for fn in (sampled, sampled_uniform):
        grads, sums = loss_and_grads(fn, h, table, bias, labels, weights)
        np.testing.assert_allclose(sums["loss_sum"], sums_full["loss_sum"], rtol=1e-5)
        np.testing.assert_allclose(sums["weight_sum"], sums_full["weight_sum"])
        for a, b in zip(grads_full, grads, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    # Among the sampled candidates a tie counts against the label (label 3 ties with 17 here),
    # where the full argmax gives it to the first column.
    assert sums["correct_sum"] == sums_full["correct_sum"] - 1


def test_logq_correction_shifts_each_candidate_by_its_log_probability():
    h, table, bias, labels, weights = head_batch(seed=3)
    negatives = jnp.array([1, 2, 2, 5, 9], jnp.int32)
    neg_log_q = jnp.log(jnp.array([0.1, 0.3, 0.3, 0.05, 0.2], jnp.float32))
    label_log_q = jnp.full((B, P), jnp.log(0.02), jnp.float32)
    out = losses.sampled_softmax_cross_entropy(
        h, table, bias, labels, weights, negatives, neg_log_q, label_log_q
    )
    scores = np.asarray(losses.full_logits(h, table, bias), np.float64)  # [B, P, V]
    pos = np.take_along_axis(scores, labels[..., None], -1)[..., 0] - np.log(0.02)
    neg = scores[..., np.asarray(negatives)] - np.log(np.asarray(jnp.exp(neg_log_q), np.float64))
    neg = np.where(labels[..., None] == np.asarray(negatives), -np.inf, neg)
    all_ = np.concatenate([pos[..., None], neg], -1)
    nll = np.log(np.exp(all_ - all_.max(-1, keepdims=True)).sum(-1)) + all_.max(-1) - pos
    np.testing.assert_allclose(out["loss_sum"], (weights * nll).sum(), rtol=1e-5)


def test_gbce_matches_numpy():
    h, table, bias, labels, weights = head_batch(seed=5)
    negatives = np.array([1, 4, 4, labels[1, 0], 20, 11], np.int32)  # a duplicate and a hit
    t, num_items = 0.75, V - 2
    beta = losses.gbce_beta(t, len(negatives), num_items)
    alpha = len(negatives) / (num_items - 1)
    np.testing.assert_allclose(beta, 1 - t * (1 - alpha), rtol=1e-12)
    out = jax.jit(losses.gbce_loss, static_argnames="beta")(
        h, table, bias, labels, weights, negatives, beta=beta
    )

    scores = np.asarray(h, np.float64) @ table.T.astype(np.float64) + bias  # [B, P, V]
    sigmoid = 1.0 / (1.0 + np.exp(-scores))
    expected = {"loss_sum": 0.0, "weight_sum": weights.sum(), "correct_sum": 0.0}
    for b in range(B):
        for p in range(P):
            y = labels[b, p]
            negs = [i for i in negatives if i != y]
            loss = -(beta * np.log(sigmoid[b, p, y]) + np.log(1 - sigmoid[b, p, negs]).sum())
            expected["loss_sum"] += weights[b, p] * loss / (len(negatives) + 1)
            expected["correct_sum"] += weights[b, p] * (scores[b, p, y] > scores[b, p, negs].max())
    for k, v in expected.items():
        np.testing.assert_allclose(out[k], v, rtol=1e-5)
    assert out["correct_sum"] > 0


def test_gbce_shift_starts_at_the_best_constant_score():
    # Issue 21: unshifted gBCE over 256 negatives first has to push every score from 0 down to
    # about log(beta / N), and on ML-100K SASRec never got past that constant solution. The shift
    # is that constant: at all-zero scores the shifted loss has no gradient on a common offset,
    # the unshifted one a large one, and a constant shift changes no ranking.
    rng = np.random.default_rng(7)
    h = jnp.zeros((B, P, H))  # every score 0, as at initialisation
    table, bias = rng.normal(size=(300, H)).astype(np.float32), np.zeros(300, np.float32)
    labels = rng.integers(1, 11, size=(B, P)).astype(np.int32)
    weights = np.ones((B, P), np.float32)
    negatives = np.arange(11, 11 + 256)  # no accidental hits
    beta = losses.gbce_beta(0.75, len(negatives), num_items=2000)
    shift = losses.gbce_shift(beta, len(negatives))
    np.testing.assert_allclose(shift, np.log(beta / 256), rtol=1e-12)

    def loss_at(offset, s):
        out = losses.gbce_loss(
            h, table, bias + offset, labels, weights, negatives, beta=beta, shift=s
        )
        return out["loss_sum"] / out["weight_sum"]

    shifted = jax.grad(loss_at)(0.0, shift)
    unshifted = jax.grad(loss_at)(0.0, 0.0)
    assert abs(shifted) < 1e-6
    assert unshifted > 0.4  # (N/2 - beta/2) / (N + 1): every score wants to go down
    config = default_config.get_config()
    assert RunConfig.from_config_dict(config).loss.gbce_shift is False  # today's loss by default
    config.loss.gbce_shift = True
    assert RunConfig.from_config_dict(config).loss.gbce_shift is True


def test_draws_follow_the_proposal():
    vocab = 12
    counts = np.zeros(vocab - 1, np.int64)  # Corpus.popularity layout: [0] = padding
    counts[[2, 5, 7]] = (100, 300, 600)
    prepared = losses.prepare_item_counts(counts, vocab)
    assert prepared.shape == (vocab,) and prepared[0] == prepared[-1] == 0
    labels = jnp.array([[5, 0]], jnp.int32)
    negatives, neg_log_q, label_log_q = losses.draw_negatives(
        jax.random.key(0),
        20_000,
        labels,
        vocab_size=vocab,
        proposal="popularity",
        item_counts=jnp.asarray(prepared),
    )
    freq = np.bincount(np.asarray(negatives), minlength=vocab) / 20_000
    assert set(np.flatnonzero(freq)) == {2, 5, 7}
    np.testing.assert_allclose(freq[[2, 5, 7]], [0.1, 0.3, 0.6], atol=0.02)
    np.testing.assert_allclose(np.exp(neg_log_q), prepared[np.asarray(negatives)] / 1000, rtol=1e-5)
    np.testing.assert_allclose(np.exp(label_log_q[0, 0]), 0.3, rtol=1e-5)
    assert np.isfinite(label_log_q).all()  # the padded label 0 too

    uniform, _, _ = losses.draw_negatives(
        jax.random.key(1), 20_000, labels, vocab_size=vocab, proposal="uniform"
    )
    freq = np.bincount(np.asarray(uniform), minlength=vocab) / 20_000
    assert freq[0] == freq[-1] == 0  # never padding or [MASK]
    np.testing.assert_allclose(freq[1:-1], 0.1, atol=0.02)
