"""Tests of placing streamed rows into per-user slots and ordering and filtering them there,
against a plain whole-array version of the same rules."""

import numpy as np
import pytest

from bert4rec_jax.datasets import ordering


def _reference(users, items, times, filters):
    """The rules of `interactions.read_sequences` on whole arrays: a stable sort by (user,
    time), then duplicates, repeats, rare items and short users dropped in that order."""
    order = np.lexsort((times, users)) if times is not None else np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    keep = np.ones(len(users), bool)
    duplicates = 0
    if times is not None:
        seen = set()
        for k, row in enumerate(zip(users, items, times[order], strict=True)):
            if row in seen:
                duplicates += 1
                keep[k] = not filters.drop_duplicates
            seen.add(row)
    users, items = users[keep], items[keep]
    if filters.drop_repeats:
        keep = np.concatenate([[True], (users[1:] != users[:-1]) | (items[1:] != items[:-1])])
        users, items = users[keep], items[keep]
    if filters.min_item_interactions:
        keep = np.bincount(items)[items] >= filters.min_item_interactions
        users, items = users[keep], items[keep]
    keep = np.bincount(users)[users] >= filters.min_user_interactions
    return users[keep], items[keep], duplicates


@pytest.mark.parametrize("seed", range(6))
def test_layout_and_order_match_the_whole_array_rules(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n, num_users, num_items = 5000, int(rng.integers(1, 300)), int(rng.integers(1, 40))
    users = rng.integers(0, num_users, n).astype(np.int32)
    items = rng.integers(0, num_items, n).astype(np.int32)
    if seed % 3 == 0:
        times = None
    elif seed % 3 == 1:
        times = rng.integers(0, 30, n)  # many ties and duplicates
    else:
        times = rng.integers(0, 60, n) / 4.0
    filters = ordering.Filters(
        drop_duplicates=bool(seed % 2),
        drop_repeats=seed in (1, 2, 4),
        min_item_interactions=[0, 0, 100, 150, 0, 120][seed],
        min_user_interactions=[1, 5, 20, 1, 30, 2][seed],
    )
    counts = np.bincount(users, minlength=num_users)
    layout = ordering.Layout(counts)
    cuts = np.sort(rng.integers(0, n, 7))
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):  # batches in file order
        if b > a:
            layout.place(users[a:b], items[a:b], None if times is None else times[a:b])
    assert layout.complete
    # Small chunks: users are ordered and filtered across many of them.
    monkeypatch.setattr(ordering, "CHUNK_ROWS", 97)
    ordered = ordering.order_and_filter(layout, filters, num_items)
    want_users, want_items, duplicates = _reference(users, items, times, filters)
    got = ordered.sequences
    assert np.array_equal(np.repeat(got.raw_user_ids, got.lengths), want_users)
    assert np.array_equal(got.raw_items, want_items)
    assert ordered.counts.get("exact duplicates", 0) == duplicates
    assert len(ordered.duplicate_slots) == duplicates


def test_stable_order_is_numpys_stable_argsort():
    rng = np.random.default_rng(0)
    for num_keys in (5, 1 << 16, 3_000_000):
        keys = rng.integers(0, num_keys, 10_000).astype(np.int32)
        expected = np.argsort(keys, kind="stable")
        assert np.array_equal(ordering.stable_order(keys, num_keys), expected)


def test_more_rows_than_counted_is_refused():
    layout = ordering.Layout(np.array([2, 1]))
    layout.place(np.array([0, 1], np.int32), np.array([5, 6], np.int32), None)
    assert not layout.complete
    with pytest.raises(ordering.LayoutOverflow):
        layout.place(np.array([1, 0], np.int32), np.array([7, 8], np.int32), None)
