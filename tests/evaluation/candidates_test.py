"""Tests for bert4rec_jax.evaluation.candidates: the sampled protocols' negatives, their draws and
their disk cache."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_corpus, make_evaluator, random_corpus

from bert4rec_jax import evaluation as ev
from bert4rec_jax import scoring
from bert4rec_jax.datasets.corpus import leave_one_out
from bert4rec_jax.evaluation import candidates as cand
from bert4rec_jax.scoring import ScoringFns

# ---- candidates -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ev.SAMPLED_PROTOCOLS)
@pytest.mark.parametrize("which", ev.SPLITS)
def test_negatives_are_valid(protocol, which):
    corpus = random_corpus(300, num_items=400, max_length=60, seed=1, repeats=True, every_item=True)
    split = leave_one_out(corpus)
    n = 100
    candidates = cand.draw_candidates(corpus, split, which, protocol, n, seed=7)
    assert candidates.shape == (len(split.eval_users), 1 + n) and candidates.dtype == np.int32
    np.testing.assert_array_equal(candidates[:, 0], split.targets(which))
    negatives = candidates[:, 1:]
    assert negatives.min() >= 1 and negatives.max() <= corpus.num_items
    for row, user in enumerate(split.eval_users):
        assert len(set(negatives[row])) == n  # no duplicates
        assert not set(negatives[row]) & set(corpus.sequence(user))  # never a rated item
        assert candidates[row, 0] not in negatives[row]


def test_same_seed_same_candidates_other_seed_other_candidates():
    corpus = random_corpus(50, num_items=300, max_length=20, seed=2, every_item=True)
    split = leave_one_out(corpus)
    a = cand.draw_candidates(corpus, split, "test", "pop100", 20, seed=3)
    b = cand.draw_candidates(corpus, split, "test", "pop100", 20, seed=3)
    c = cand.draw_candidates(corpus, split, "test", "pop100", 20, seed=4)
    d = cand.draw_candidates(corpus, split, "valid", "pop100", 20, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[:, 1:], c[:, 1:])
    assert not np.array_equal(a[:, 1:], d[:, 1:])


def test_candidates_saved_once_and_reused(tmp_path, monkeypatch):
    corpus = random_corpus(40, num_items=200, max_length=20, seed=3, every_item=True)
    split = leave_one_out(corpus)
    args = (corpus, split, "valid", "pop100", 10, 5)
    first = cand.load_candidates(*args, cache_dir=tmp_path)
    path = cand.candidates_path(tmp_path, corpus, split, "valid", "pop100", 10, 5)
    assert path.exists() and path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    assert f"{corpus.name}_standard_valid_pop100_n10_seed5" in path.name
    path.write_bytes(b"not a zip file")  # an unreadable file is drawn again, with the same result
    np.testing.assert_array_equal(cand.load_candidates(*args, cache_dir=tmp_path), first)

    def must_not_draw(*args, **kwargs):
        raise AssertionError("the saved candidates should have been loaded")

    monkeypatch.setattr(cand, "draw_candidates", must_not_draw)
    np.testing.assert_array_equal(cand.load_candidates(*args, cache_dir=tmp_path), first)
    # The Evaluator goes through the same cache.
    evaluator = make_evaluator(
        corpus, split, max_len=8, num_negatives=10, candidate_seed=5, cache_dir=tmp_path
    )
    np.testing.assert_array_equal(evaluator.candidates("valid", "pop100"), first)
    # Another corpus under the same name gets another file, never the stale candidates.
    other = random_corpus(40, num_items=200, max_length=20, seed=4, every_item=True)
    assert cand.candidates_path(
        tmp_path, other, leave_one_out(other), "valid", "pop100", 10, 5
    ) != (path)


def test_sampler_matches_exact_without_replacement_probabilities():
    # Two draws without replacement from 6 items:
    # P(i drawn) = p_i + sum_{j != i} p_j p_i / (1 - p_j).
    weights = np.array([0, 1, 2, 3, 4, 5, 10], np.float64)
    p = weights / weights.sum()
    expected = np.array(
        [p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(1, 7) if j != i) for i in range(7)]
    )
    rows = 200_000
    drawn = cand.sample_without_replacement(
        weights, np.zeros(rows + 1, np.int64), np.zeros(0, np.int64), 2, np.random.default_rng(0)
    )
    assert (drawn[:, 0] != drawn[:, 1]).all()
    frequency = np.bincount(drawn.ravel(), minlength=7) / rows
    # Each frequency is a mean of 200k Bernoulli draws: std <= 0.5 / sqrt(2e5) = 0.0011, so 0.006
    # is more than 5 standard deviations (and the seed is fixed: the test is deterministic).
    np.testing.assert_allclose(frequency[1:], expected[1:], atol=0.006)


def test_popularity_draws_follow_popularity():
    # A Zipf-like catalogue; users' short histories exclude few items, and the exact expectation
    # accounts for them: E[count_i] = sum_u [i not in seq_u] w_i / (W - w(seq_u)) for one draw.
    rng = np.random.default_rng(0)
    num_items, num_users = 300, 20_000
    zipf = 1.0 / np.arange(1, num_items + 1)
    sequences = [list(rng.choice(num_items, 3, replace=False, p=zipf / zipf.sum()) + 1)
                 for _ in range(num_users)]  # fmt: skip
    sequences += [[i, i + 1] for i in range(1, num_items + 1, 2)]  # covers the catalogue
    corpus = make_corpus(sequences)
    split = leave_one_out(corpus)
    negatives = cand.draw_candidates(corpus, split, "test", "pop100", 1, seed=0)[:, 1]
    w = corpus.popularity.astype(np.float64)
    expected = np.zeros(num_items + 1)
    for user in split.eval_users:
        seq = np.unique(corpus.sequence(user))
        share = w / (w.sum() - w[seq].sum())
        share[seq] = 0
        expected += share
    observed = np.bincount(negatives, minlength=num_items + 1).astype(np.float64)
    frequent = expected >= 20  # the chi-square approximation wants large expected counts
    assert frequent.sum() > 100
    chi2 = np.sum((observed[frequent] - expected[frequent]) ** 2 / expected[frequent])
    dof = int(frequent.sum()) - 1
    # chi2 has mean dof and std sqrt(2 dof); mean + 5 std is a generous yet meaningful bound (a
    # uniform sampler fails it by far).
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)


def test_sampler_finishes_rows_whose_history_holds_the_weight():
    # Item 1 holds almost all the weight but is forbidden: rejection alone would never finish.
    weights = np.concatenate([[0.0, 1e9], np.ones(19)])  # items 1..20
    drawn = cand.sample_without_replacement(
        weights, np.array([0, 1, 2]), np.array([1, 1]), 19, np.random.default_rng(0)
    )
    for row in drawn:
        assert sorted(row) == list(range(2, 21))


def test_users_with_few_items_left_get_all_of_them_then_padding():
    corpus = make_corpus([list(range(1, 9)), [9, 10, 1]])  # user 0 rated 8 of the 10 items
    split = leave_one_out(corpus)
    candidates = cand.draw_candidates(corpus, split, "test", "pop100", 4, seed=0)
    assert sorted(candidates[0, 1:]) == [0, 0, 9, 10]
    assert (candidates[0, 3:] == 0).all()  # padding at the end of the row
    assert len(set(candidates[1, 1:])) == 4 and not {9, 10, 1} & set(candidates[1, 1:])
    # Padding never counts: a constant model ranks user 0's target behind its 2 real negatives.
    popularity, params = scoring.popularity_fns(corpus)
    constant = lambda p, h, item_ids: jnp.zeros((h.shape[0], item_ids.shape[-1]), jnp.float32)
    evaluator = make_evaluator(
        corpus, split, ScoringFns(popularity.encode, constant), max_len=4, protocols=("pop100",),
        num_negatives=4, batch_size=8,
    )  # fmt: skip
    ranks = evaluator.rank_targets(params, "test", ["pop100"], np.arange(2))
    np.testing.assert_array_equal(ranks["pop100"], [2, 4])
