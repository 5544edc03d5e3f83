"""Tests for bert4rec_jax.losses."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import small_model

from bert4rec_jax import losses, models, optimizer, sharding
from bert4rec_jax import train_step as train_step_lib
from bert4rec_jax.config import RunConfig
from configs import default as default_config


def numpy_reference(logits, labels, weights):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]
    correct = logits.argmax(-1) == labels
    return {
        "loss_sum": (weights * nll).sum(),
        "weight_sum": weights.sum(),
        "correct_sum": ((weights != 0) & correct).sum(),  # a count: accuracy is unweighted
        "prediction_count": (weights != 0).sum(),
    }


def random_batch(seed=0, b=4, p=5, v=13):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(b, p, v)).astype(np.float32)
    labels = rng.integers(1, v - 1, size=(b, p)).astype(np.int32)
    weights = (rng.random((b, p)) < 0.7).astype(np.float32)
    # Make some predictions right, so correct_sum is not trivially 0.
    logits[0, 0, labels[0, 0]] += 100.0
    weights[0, 0] = 1.0
    return logits, labels, weights


def test_matches_numpy_reference():
    logits, labels, weights = random_batch()
    out = jax.jit(losses.masked_cross_entropy)(logits, labels, weights)
    ref = numpy_reference(logits, labels, weights)
    assert set(out) == {"loss_sum", "weight_sum", "correct_sum", "prediction_count"}
    for k in ref:
        assert out[k].dtype == jnp.float32 and out[k].shape == ()
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5)
    assert out["correct_sum"] >= 1


def test_fractional_weights_and_bfloat16_logits():
    logits, labels, weights = random_batch(seed=1)
    weights = weights * 0.5
    weights[1] *= 6.0  # some predictions weigh 3, e.g. mask-last ones (input.mask_last_weight)
    ref = numpy_reference(logits, labels, weights)
    out = losses.masked_cross_entropy(logits, labels, weights)
    for k in ref:  # the loss and weight sums weighted, the correct and prediction counts not
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5)
    assert out["weight_sum"] != out["prediction_count"]
    out16 = losses.masked_cross_entropy(jnp.asarray(logits, jnp.bfloat16), labels, weights)
    assert out16["loss_sum"].dtype == jnp.float32
    np.testing.assert_allclose(out16["loss_sum"], ref["loss_sum"], rtol=2e-2)


def test_zero_weight_positions_do_not_contribute():
    logits, labels, weights = random_batch(seed=2)
    off = weights == 0
    assert off.any()
    scrambled = logits.copy()
    scrambled[off] = np.random.default_rng(3).normal(scale=50.0, size=scrambled[off].shape)
    other_labels = np.where(off, 0, labels)  # padded slots carry label 0, as the pipeline's do
    a = losses.masked_cross_entropy(logits, labels, weights)
    b = losses.masked_cross_entropy(scrambled, other_labels, weights)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)

    grads = jax.grad(lambda x: losses.masked_cross_entropy(x, labels, weights)["loss_sum"])(logits)
    assert np.all(np.asarray(grads)[off] == 0)
    assert np.all(np.isfinite(grads))


# ---- Chunked, sampled and gBCE losses -----------------------------------------------------------

B, P, H, V = 3, 4, 8, 23  # V = 23 with chunk 5: four full chunks and a partial one of 3


def head_batch(seed=0, dtype=np.float32):
    """Head features, the tied output layer and labels with padded (weight 0, label 0) slots."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(B, P, H)).astype(np.float32)
    table = rng.normal(size=(V, H)).astype(np.float32)
    bias = rng.normal(size=(V,)).astype(np.float32)
    labels = rng.integers(1, V - 1, size=(B, P)).astype(np.int32)
    weights = (rng.random((B, P)) < 0.7).astype(np.float32)
    labels[weights == 0] = 0
    # Two identical columns with the highest scores, in different chunks: argmax ties, and the
    # first one (3) wins. Labels on both, so one tie counts as correct and the other not.
    table[17] = table[3]
    bias[3] = bias[17] = 50.0
    labels[0, :2] = (3, 17)
    weights[0, :2] = 1.0
    return jnp.asarray(h, dtype), table, bias, labels, weights


def loss_and_grads(fn, h, table, bias, labels, weights):
    def loss(h, table, bias):
        sums = fn(h, table, bias, labels, weights)
        return sums["loss_sum"], sums

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(h, table, bias)


def full_fn(h, table, bias, labels, weights):
    return losses.masked_cross_entropy(losses.full_logits(h, table, bias), labels, weights)


@pytest.mark.parametrize("chunk_size", [5, 7, 23, 100])
def test_chunked_equals_materialised_loss_accuracy_and_gradients(chunk_size):
    h, table, bias, labels, weights = head_batch()
    grads_full, sums_full = loss_and_grads(full_fn, h, table, bias, labels, weights)

    def chunked(*args):
        return losses.chunked_cross_entropy(*args, chunk_size=chunk_size)

    grads_chunked, sums_chunked = loss_and_grads(chunked, h, table, bias, labels, weights)
    ref = numpy_reference(np.asarray(losses.full_logits(h, table, bias)), labels, weights)
    for k in ref:
        assert sums_chunked[k].dtype == jnp.float32
        np.testing.assert_allclose(sums_chunked[k], sums_full[k], rtol=1e-5)
        np.testing.assert_allclose(sums_chunked[k], ref[k], rtol=1e-5)
    assert 1 <= sums_chunked["correct_sum"] < sums_chunked["weight_sum"]
    for name, a, b in zip(("h", "table", "bias"), grads_full, grads_chunked, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name)
    # Padded slots get no gradient; the [MASK] and padding columns do (the softmax covers them).
    assert np.all(np.asarray(grads_chunked[0])[weights == 0] == 0)
    assert np.abs(np.asarray(grads_chunked[2])[[0, V - 1]]).min() > 0


def test_chunked_with_bfloat16_features_accumulates_in_float32():
    h, table, bias, labels, weights = head_batch(seed=1, dtype=jnp.bfloat16)
    grads_full, sums_full = loss_and_grads(full_fn, h, table, bias, labels, weights)

    def chunked(*args):
        return losses.chunked_cross_entropy(*args, chunk_size=5)

    grads_chunked, sums_chunked = loss_and_grads(chunked, h, table, bias, labels, weights)
    for k in sums_full:
        assert sums_chunked[k].dtype == jnp.float32
        np.testing.assert_allclose(sums_chunked[k], sums_full[k], rtol=1e-5)
    assert grads_chunked[0].dtype == jnp.bfloat16
    # dh is rounded to bfloat16 from float32 values that agree to ~1e-6: at most one bf16 ulp.
    np.testing.assert_allclose(
        np.asarray(grads_chunked[0], np.float32),
        np.asarray(grads_full[0], np.float32),
        rtol=1e-2,
        atol=1e-6,
    )
    for a, b in zip(grads_full[1:], grads_chunked[1:], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_chunked_equals_full_through_a_real_model():
    model = small_model(V, 10, hidden_size=H, intermediate_size=16)
    rng = np.random.default_rng(4)
    ids = rng.integers(1, V - 1, size=(B, 10)).astype(np.int32)
    ids[:, -2:] = 0  # padding
    positions = np.stack([rng.choice(8, size=P, replace=False) for _ in range(B)]).astype(np.int32)
    labels = np.take_along_axis(ids, positions, axis=1)
    weights = np.ones((B, P), np.float32)
    weights[1, -1] = 0.0
    labels[1, -1] = 0
    ids[np.arange(B)[:, None], positions] = model.config.mask_id
    params = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), ids, positions)
    params = params["params"]
    dropout = jax.random.key(1)

    def apply(params, **kw):
        return model.apply(
            {"params": params}, ids, positions, train=True, rngs={"dropout": dropout}, **kw
        )

    @jax.jit
    def run(params):
        def loss_fn(params, loss_type):
            h = apply(params, method=models.BERT4Rec.predict_hidden)  # [B, P, H]
            config = losses.LossConfig(type=loss_type, chunk_size=5)
            sums = losses.cloze_loss(
                config, h, params["item_embedding"], params["output_bias"], labels, weights
            )
            return sums["loss_sum"], sums

        # "full" is exactly the model's own logits + masked_cross_entropy.
        direct = losses.masked_cross_entropy(apply(params), labels, weights)
        full = jax.grad(loss_fn, has_aux=True)(params, "full")
        return full, jax.grad(loss_fn, has_aux=True)(params, "chunked"), direct

    (grads_full, sums_full), (grads_chunked, sums_chunked), direct = run(params)
    for k in sums_full:
        np.testing.assert_array_equal(sums_full[k], direct[k])
        np.testing.assert_allclose(sums_chunked[k], sums_full[k], rtol=1e-5)
    flat_full = jax.tree_util.tree_leaves_with_path(grads_full)
    flat_chunked = jax.tree.leaves(grads_chunked)
    assert len(flat_full) == len(flat_chunked) > 10
    for (path, a), b in zip(flat_full, flat_chunked, strict=True):
        assert np.abs(a).max() > 0, path
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


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


@pytest.mark.parametrize(
    "field, value",
    [
        ("type", "softmax"),
        ("auto_chunk_above", -1),
        ("chunk_size", 0),
        ("num_negatives", 0),
        ("proposal", "zipf"),
        ("gbce_t", 1.5),
    ],
)
def test_bad_loss_config_names_the_field(field, value):
    config = default_config.get_config()
    config.loss[field] = value
    with pytest.raises(ValueError, match=re.escape(f"loss.{field}=")):
        RunConfig.from_config_dict(config)


def test_loss_config_defaults_and_checks_against_the_data():
    assert RunConfig.from_config_dict(default_config.get_config()).loss == losses.LossConfig()
    auto = losses.LossConfig(type="auto", auto_chunk_above=100)
    assert (auto.resolve(100), auto.resolve(101)) == ("full", "chunked")
    with pytest.raises(ValueError, match=re.escape("loss.num_negatives=30")):
        losses.LossConfig(type="gbce", num_negatives=30).check(vocab_size=V)
    with pytest.raises(ValueError, match=re.escape("loss.proposal=")):
        losses.LossConfig(type="sampled_softmax", proposal="popularity").check(vocab_size=V)
    with pytest.raises(ValueError, match=re.escape("loss.proposal=")):
        losses.LossConfig(type="gbce", proposal="popularity")


def _one_train_step(loss_config, num_devices):
    """Parameters and metrics after one real (sharded, jitted) train step with this loss."""
    mesh = sharding.make_mesh(num_devices)
    num_items, batch_size, max_len, num_preds = 40, 16, 12, 3
    model = small_model(num_items + 2, max_len, hidden_size=8, intermediate_size=16)
    schedule = optimizer.make_schedule(1e-2, 0, 10)
    tx = optimizer.make_optimizer(schedule)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, num_items + 1, size=(batch_size, max_len)).astype(np.int32)
    batch = {
        "ids": np.where(np.arange(max_len) < num_preds, model.config.mask_id, ids).astype(np.int32),
        "positions": np.tile(np.arange(num_preds, dtype=np.int32), (batch_size, 1)),
        "labels": ids[:, :num_preds],
        "weights": np.ones((batch_size, num_preds), np.float32),
    }
    counts = np.bincount(ids.ravel(), minlength=num_items + 1)  # Corpus.popularity's layout
    state = train_step_lib.create_train_state(model, tx, mesh, max_predictions=num_preds, seed=0)
    step_fn = train_step_lib.make_train_step(model, tx, schedule, loss_config, item_counts=counts)
    step = train_step_lib.jit_train_step(step_fn, state, mesh)
    state, metrics = step(state, sharding.global_batch(mesh, batch))
    metrics = jax.device_get(metrics)
    assert np.isfinite(metrics["loss_sum"]) and metrics["weight_sum"] == batch_size * num_preds
    return jax.device_get(state.params), metrics


@pytest.mark.slow
def test_chunked_train_step_on_8_devices_equals_full():
    params_full, metrics_full = _one_train_step(losses.LossConfig(type="full"), 8)
    params, metrics = _one_train_step(losses.LossConfig(type="chunked", chunk_size=16), 8)
    for k in ("loss_sum", "correct_sum", "grad_norm"):
        np.testing.assert_allclose(metrics[k], metrics_full[k], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params_full), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss_type, proposal", [("sampled_softmax", "popularity"), ("gbce", "uniform")]
)
def test_sampled_train_steps_run(loss_type, proposal):
    config = losses.LossConfig(type=loss_type, num_negatives=8, proposal=proposal)
    _, metrics = _one_train_step(config, 8)
    assert metrics["grad_norm"] > 0
