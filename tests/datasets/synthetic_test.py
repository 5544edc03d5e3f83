"""Tests for bert4rec_jax.datasets.synthetic: deterministic, learnable, checked sizes."""

import numpy as np
import pytest

from bert4rec_jax.datasets import corpus as corpus_lib
from bert4rec_jax.datasets import load_corpus, synthetic


def test_synthetic_is_deterministic_and_seed_dependent():
    a = synthetic.generate_sequences(300, 100, seed=0)
    b = synthetic.generate_sequences(300, 100, seed=0)
    c = synthetic.generate_sequences(300, 100, seed=1)
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.raw_items, b.raw_items)
    assert not (np.array_equal(a.offsets, c.offsets) and np.array_equal(a.raw_items, c.raw_items))
    assert a.lengths.min() >= synthetic.MIN_LENGTH and a.lengths.max() <= synthetic.MAX_LENGTH
    assert a.raw_items.min() >= 1 and a.raw_items.max() <= 100
    assert a.raw_user_ids.tolist() == list(range(1, 301))


def test_synthetic_next_item_is_predictable_from_the_history():
    # Rule "last item + the user's most common step" vs the most popular item, on the last item.
    seqs = synthetic.generate_sequences(2000, 500, seed=0)
    hits_rule, hits_pop = 0, 0
    popular = np.bincount(seqs.raw_items).argmax()
    for u in range(seqs.num_users):
        items = seqs.raw_items[seqs.offsets[u] : seqs.offsets[u + 1]]
        steps = (np.diff(items[:-1]) + 250) % 500 - 250  # signed steps on the ring
        values, counts = np.unique(steps, return_counts=True)
        guess = (items[-2] - 1 + values[counts.argmax()]) % 500 + 1
        hits_rule += guess == items[-1]
        hits_pop += popular == items[-1]
    assert hits_rule / seqs.num_users > 0.6
    assert hits_pop / seqs.num_users < 0.02


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_users"):
        synthetic.generate_sequences(0, 100, 0)
    with pytest.raises(ValueError, match="num_items"):
        synthetic.generate_sequences(10, 3, 0)


def test_synthetic_corpus_is_deterministic(tmp_path):
    params = {"num_users": 300, "num_items": 80, "seed": 3}
    a = load_corpus("synthetic", data_dir=str(tmp_path / "a"), synthetic=params)
    b = load_corpus("synthetic", data_dir=str(tmp_path / "b"), synthetic=params)
    c = load_corpus("synthetic", data_dir=str(tmp_path / "a"), synthetic={**params, "seed": 4})
    assert a.num_users == 300 and a.num_items <= 80
    for field in ("offsets", "items", "raw_item_ids", "raw_user_ids"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not (np.array_equal(a.offsets, c.offsets) and np.array_equal(a.items, c.items))
    corpus_lib.leave_one_out(a)  # every synthetic user is evaluable (length >= 5)
