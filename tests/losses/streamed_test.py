"""Tests for bert4rec_jax.losses.streamed: the chunked exact softmax equals the materialised one
(loss, accuracy, gradients)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import B, H, P, V, full_fn, head_batch, loss_and_grads, numpy_reference, small_model

from bert4rec_jax import losses, models

# ---- Chunked, sampled and gBCE losses -----------------------------------------------------------


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
