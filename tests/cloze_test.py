"""Tests of the rules both input paths share that are written once for numpy and jax.numpy."""

import jax
import jax.numpy as jnp
import numpy as np

from bert4rec_jax import cloze

# Two users' flat items: [11, 12, 13] and [21, 22, 23, 24, 25].
ITEMS = np.array([11, 12, 13, 21, 22, 23, 24, 25], np.int32)


def test_next_item_rows_shift_the_window_by_one():
    rows = cloze.next_item_rows(ITEMS, np.array([0, 3, 5]), np.array([3, 5, 2]), 5)
    np.testing.assert_array_equal(
        rows["ids"], [[11, 12, 0, 0, 0], [21, 22, 23, 24, 0], [23, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        rows["labels"], [[12, 13, 0, 0, 0], [22, 23, 24, 25, 0], [24, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(rows["positions"], np.broadcast_to(np.arange(5), (3, 5)))
    np.testing.assert_array_equal(rows["weights"], rows["labels"] != 0)
    assert rows["ids"].dtype == rows["labels"].dtype == rows["positions"].dtype == np.int32
    assert rows["weights"].dtype == np.float32


def test_numpy_and_jax_numpy_give_the_same_rows_one_at_a_time_or_many():
    starts, lengths = np.array([0, 3, 4, 6]), np.array([3, 5, 4, 2])
    host = cloze.next_item_rows(ITEMS, starts, lengths, 6)
    # As device_input calls it: one row at a time under vmap, int32 on the device.
    device = jax.vmap(lambda s, n: cloze.next_item_rows(jnp.asarray(ITEMS), s, n, 6, jnp))(
        jnp.asarray(starts, jnp.int32), jnp.asarray(lengths, jnp.int32)
    )
    for key, value in host.items():
        np.testing.assert_array_equal(np.asarray(device[key]), value)
        assert device[key].dtype == value.dtype
    ids, real = cloze.window_items(ITEMS, starts, lengths, 6)
    got_ids, got_real = cloze.window_items(
        jnp.asarray(ITEMS), jnp.asarray(starts), jnp.asarray(lengths), 6, jnp
    )
    np.testing.assert_array_equal(np.asarray(got_ids), ids)
    np.testing.assert_array_equal(np.asarray(got_real), real)
    np.testing.assert_array_equal(ids[1], [21, 22, 23, 24, 25, 0])
