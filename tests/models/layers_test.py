"""models/layers.py: attention written out against jax's, the masks, gathers and item scores."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert4rec_jax.models import layers


def test_manual_attention_equals_jax_attention_also_for_a_fully_masked_row():
    q, k, v = jax.random.normal(jax.random.key(2), (3, 2, 5, 2, 4))
    mask = jnp.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)[:, None, None, :]
    expected = jax.nn.dot_product_attention(q, k, v, mask=mask)
    np.testing.assert_allclose(layers.manual_attention(q, k, v, mask), expected, atol=1e-6)


def test_masks_hide_padding_and_the_future():
    valid = jnp.array([[True, True, True, False], [False, False, False, False]])
    keys = layers.key_mask(valid)
    assert keys.shape == (2, 1, 1, 4)
    np.testing.assert_array_equal(keys[0, 0, 0], [1, 1, 1, 0])
    np.testing.assert_array_equal(keys[1, 0, 0], [1, 1, 1, 1])  # all padding: attends anywhere
    causal = layers.causal_mask(valid)  # [B, 1, N, N]
    np.testing.assert_array_equal(causal[0, 0], np.tril(np.ones((4, 4), bool)) & [1, 1, 1, 0])
    rows = jnp.array([[2, 0], [3, 1]])
    chosen = layers.causal_mask(valid, rows)  # [B, 1, 2, N]: those rows of the full mask
    np.testing.assert_array_equal(chosen[:, 0], np.take_along_axis(
        np.asarray(causal[:, 0]), np.asarray(rows)[..., None], axis=1))  # fmt: skip


def test_gather_rows_and_mean_embedding():
    x = jnp.arange(24.0).reshape(2, 4, 3)
    rows = jnp.array([[3, 0], [1, 1]])
    np.testing.assert_array_equal(layers.gather_rows(x, rows)[1, 0], x[1, 1])
    np.testing.assert_array_equal(layers.gather_rows(x[..., 0], rows), [[9.0, 0.0], [15.0, 15.0]])
    table = jnp.array([[9.0, 9.0], [1.0, 3.0], [3.0, 5.0]])
    mean = layers.mean_embedding(table, jnp.array([[1, 2, 0], [0, 0, 0]]))  # 0 = none
    np.testing.assert_allclose(mean, [[2.0, 4.0], [0.0, 0.0]])


@pytest.mark.parametrize("with_bias", [True, False])
def test_score_items_for_every_candidate_layout(with_bias):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(7, 4)).astype(np.float32)
    bias = rng.normal(size=(7,)).astype(np.float32) if with_bias else None
    h = rng.normal(size=(2, 3, 4)).astype(np.float32)  # [B, P, H]
    full = h @ table.T + (0.0 if bias is None else bias)  # [B, P, V]
    np.testing.assert_allclose(layers.score_items(h, table, bias), full, rtol=1e-5, atol=1e-5)
    shared = np.array([5, 1, 1])
    np.testing.assert_allclose(
        layers.score_items(h, table, bias, shared), full[..., shared], rtol=1e-5, atol=1e-5
    )
    per_row = np.array([[1, 2], [6, 0]])
    np.testing.assert_allclose(
        layers.score_items(h[:, 0], table, bias, per_row),
        np.take_along_axis(full[:, 0], per_row, axis=1), rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    np.testing.assert_allclose(
        layers.score_items(h, table, bias, per_row),
        np.take_along_axis(full, per_row[:, None, :], axis=2), rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    with pytest.raises(ValueError, match="do not fit"):
        layers.score_items(h, table, bias, np.zeros((3, 2), np.int32))
