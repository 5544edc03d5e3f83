"""Tests for bert4rec_jax.losses.core: the full softmax against numpy, weights, LossConfig."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import V, numpy_reference

from bert4rec_jax import losses
from bert4rec_jax.config import RunConfig
from configs import default as default_config


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
