"""Tests of bert4rec_jax.evaluation: inputs, candidates, metrics, sharded ranking."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_corpus, random_corpus, small_model

from bert4rec_jax import evaluation as ev
from bert4rec_jax import scoring, sharding
from bert4rec_jax.datasets.corpus import Corpus, leave_one_out
from bert4rec_jax.evaluation import candidates as cand
from bert4rec_jax.evaluation import ranking
from bert4rec_jax.scoring import ScoringFns


def make_evaluator(corpus, split, fns=None, *, cache_dir=None, **config):
    """An Evaluator on all 8 test devices; `config` holds EvalConfig fields."""
    fns = fns or scoring.popularity_fns(corpus)[0]
    return ev.Evaluator(
        corpus, split, ev.EvalConfig(**config), fns, mesh=sharding.make_mesh(), cache_dir=cache_dir
    )


# ---- metrics --------------------------------------------------------------------------------


def test_metrics_hand_worked():
    m = ev.ranking_metrics(np.array([0, 1, 4, 25]), ks=(1, 5, 10, 20))
    assert m["hr@1"] == pytest.approx(1 / 4)
    assert m["hr@5"] == pytest.approx(3 / 4)  # ranks 0, 1, 4 are < 5
    assert m["hr@10"] == pytest.approx(3 / 4)
    assert m["hr@20"] == pytest.approx(3 / 4)  # rank 25 is outside every cut-off
    assert m["ndcg@1"] == pytest.approx(1 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert m["ndcg@20"] == pytest.approx(m["ndcg@5"])
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 26) / 4)  # MRR is not cut


def test_metrics_k_larger_than_candidates_counts_everyone():
    # 3 candidates: ranks are 0..2, so HR@100 = 1 and NDCG@100 = mean 1 / log2(rank + 2).
    m = ev.ranking_metrics(np.array([0, 2, 2]), ks=(2, 100))
    assert m["hr@2"] == pytest.approx(1 / 3)
    assert m["hr@100"] == 1.0
    assert m["ndcg@100"] == pytest.approx((1 + 2 / math.log2(4)) / 3)


def test_format_table_has_a_row_per_protocol():
    results = {"pop100/hr@1": 0.5, "pop100/mrr": 0.25, "full/hr@1": 0.125, "num_users": 8.0}
    table = ev.format_table(results)
    lines = table.splitlines()
    assert lines[0].split() == ["protocol", "hr@1", "mrr"]
    assert lines[1].split() == ["pop100", "0.5000", "0.2500"]
    assert lines[2].split() == ["full", "0.1250", "-"]
    assert "num_users: 8" in table


# ---- inputs ---------------------------------------------------------------------------------


def test_inputs_valid_and_test_truncation():
    corpus = make_corpus([list(range(1, 11)), [11, 12, 13], [14, 15, 16, 17]])
    split = leave_one_out(corpus)
    max_len = 5
    valid_ids, valid_pos = scoring.build_inputs(corpus, split, "valid", max_len)
    test_ids, test_pos = scoring.build_inputs(corpus, split, "test", max_len)
    mask = corpus.mask_id
    # User 0: 1..10; valid target 9, test target 10; the last max_len - 1 = 4 items are kept.
    np.testing.assert_array_equal(valid_ids[0], [5, 6, 7, 8, mask])
    np.testing.assert_array_equal(test_ids[0], [6, 7, 8, 9, mask])
    # User 1: 11, 12, 13; valid input = [11], test input = [11, 12]; padding after [MASK].
    np.testing.assert_array_equal(valid_ids[1], [11, mask, 0, 0, 0])
    np.testing.assert_array_equal(test_ids[1], [11, 12, mask, 0, 0])
    np.testing.assert_array_equal(valid_pos, [4, 1, 2])
    np.testing.assert_array_equal(test_pos, [4, 2, 3])
    assert valid_ids.dtype == np.int32 and valid_pos.dtype == np.int32
    for row in range(3):
        # The test input ends with the validation item; the validation input never holds it.
        assert test_ids[row, test_pos[row] - 1] == split.valid_targets[row]
        assert split.valid_targets[row] not in valid_ids[row]
        assert split.test_targets[row] not in test_ids[row]


def test_inputs_paper_mode_same_histories():
    corpus = make_corpus([list(range(1, 11)), [11, 12, 13]])
    for which in ev.SPLITS:
        a = scoring.build_inputs(corpus, leave_one_out(corpus, "standard"), which, 6)
        b = scoring.build_inputs(corpus, leave_one_out(corpus, "paper"), which, 6)
        np.testing.assert_array_equal(a[0], b[0])


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
    assert "toy_standard_valid_pop100_n10_seed5" in path.name
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


# ---- ranking on the mesh --------------------------------------------------------------------

HIDDEN = 4


def integer_model(num_items: int, seed: int):
    """A toy model with small integer parameters: float32 scores are exact, and ties are common."""
    rng = np.random.default_rng(seed)
    params = {
        "embedding": jnp.asarray(rng.integers(-2, 3, (num_items + 2, HIDDEN)), jnp.float32),
        "bias": jnp.asarray(rng.integers(-1, 2, num_items + 2), jnp.float32),
    }

    def encode_fn(params, ids, mask_pos):  # [B, N], [B] -> [B, H]
        last = jnp.take_along_axis(ids, (mask_pos - 1)[:, None], axis=1)[:, 0]  # [B]
        return params["embedding"][last] + params["embedding"][ids[:, 0]]

    def score_fn(params, h, item_ids):  # [B, H], [C] or [B, C] -> [B, C]
        emb = params["embedding"][item_ids]  # [C, H] or [B, C, H]
        if item_ids.ndim == 1:
            return h @ emb.T + params["bias"][item_ids]
        return jnp.einsum("bh,bch->bc", h, emb) + params["bias"][item_ids]

    return ScoringFns(encode_fn, score_fn), params


def brute_force_ranks(corpus, split, which, max_len, fns, params, exclude):
    """The pessimistic rank of every target over the catalogue, in numpy, one user at a time."""
    ids, mask_pos = scoring.build_inputs(corpus, split, which, max_len)
    h = np.asarray(fns.encode(params, jnp.asarray(ids), jnp.asarray(mask_pos)))
    all_items = np.arange(1, corpus.num_items + 1)
    scores = np.asarray(fns.score(params, jnp.asarray(h), jnp.asarray(all_items)))  # [E, V]
    ends = split.history_ends(corpus, which)
    ranks = []
    for row, user in enumerate(split.eval_users):
        target = split.targets(which)[row]
        history = set(corpus.items[corpus.offsets[user] : ends[row]].tolist())
        t = scores[row, target - 1]
        count = 0
        for item in all_items:
            if item == target or (exclude and item in history):
                continue
            count += scores[row, item - 1] >= t
        ranks.append(count)
    return np.array(ranks)


@pytest.mark.parametrize("exclude, width_cap", [(True, 1024), (True, 0), (False, 1024)])
def test_full_ranking_equals_brute_force(exclude, width_cap, monkeypatch):
    # width_cap 0: histories padded per batch (as for long histories) instead of to one width.
    monkeypatch.setattr(ranking, "_SINGLE_HISTORY_WIDTH_MAX", width_cap)
    # 37 items in chunks of 10 (the last chunk is short), 41 users in batches of 16 on 8 devices,
    # repeated items in histories (the target may also be in its own history).
    corpus = random_corpus(40, num_items=37, max_length=30, seed=5, repeats=True, every_item=True)
    split = leave_one_out(corpus)
    assert len(split.eval_users) % 16 and corpus.num_items % 10
    mesh = sharding.make_mesh()
    assert sharding.data_parallelism(mesh) == 8
    rows = np.arange(len(split.eval_users))
    for fns, params in (integer_model(corpus.num_items, seed=6), scoring.popularity_fns(corpus)):
        evaluator = make_evaluator(
            corpus, split, fns, max_len=12, protocols=("full",), batch_size=16, item_chunk=10,
            exclude_history=exclude,
        )  # fmt: skip
        for which in ev.SPLITS:
            got = evaluator.rank_targets(params, which, ["full"], rows)
            want = brute_force_ranks(corpus, split, which, 12, fns, params, exclude)
            np.testing.assert_array_equal(got["full"], want)


def test_sampled_ranking_equals_brute_force():
    corpus = random_corpus(30, num_items=80, max_length=15, seed=8, every_item=True)
    split = leave_one_out(corpus)
    fns, params = integer_model(corpus.num_items, seed=9)
    evaluator = make_evaluator(
        corpus, split, fns, max_len=10, protocols=("pop100", "uniform100"), num_negatives=20,
        batch_size=8, candidate_seed=3,
    )  # fmt: skip
    rows = np.arange(len(split.eval_users))
    for protocol in ("pop100", "uniform100"):
        candidates = evaluator.candidates("test", protocol)
        ids, mask_pos = evaluator.inputs("test")
        h = fns.encode(params, jnp.asarray(ids), jnp.asarray(mask_pos))
        scores = np.asarray(fns.score(params, h, jnp.asarray(candidates)))  # [E, 21]
        want = (scores[:, 1:] >= scores[:, :1]).sum(axis=1)
        got = evaluator.rank_targets(params, "test", [protocol], rows)
        np.testing.assert_array_equal(got[protocol], want)


def consecutive_corpus(seed: int = 0) -> Corpus:
    """Every user's items are consecutive ids, so the next item is always last + 1."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(37):
        length = int(rng.integers(3, 12))
        start = int(rng.integers(1, 200 - length + 2))
        sequences.append(list(range(start, start + length)))
    sequences += [[i, i + 1] for i in range(1, 201, 2)]  # covers 1..200, never evaluated
    return make_corpus(sequences)


def test_oracle_and_constant_models():
    corpus = consecutive_corpus()
    split = leave_one_out(corpus, "standard")
    n = 100
    settings = dict(
        max_len=6, protocols=ev.PROTOCOLS, num_negatives=n, ks=(1, 5, n, n + 1), batch_size=16,
        item_chunk=64,
    )  # fmt: skip

    def oracle_encode(params, ids, mask_pos):  # h = the id that follows the last input item
        last = jnp.take_along_axis(ids, (mask_pos - 1)[:, None], axis=1)  # [B, 1]
        return (last + 1).astype(jnp.float32)

    def oracle_score(params, h, item_ids):  # +1 for the target, 0 elsewhere
        item_ids = jnp.broadcast_to(item_ids, (h.shape[0], item_ids.shape[-1]))
        return (item_ids == h).astype(jnp.float32)

    def nan_elsewhere_score(params, h, item_ids):  # the target scores 1, every other item NaN
        return jnp.where(oracle_score(params, h, item_ids) > 0, 1.0, jnp.nan)

    def constant_encode(params, ids, mask_pos):
        return jnp.zeros((ids.shape[0], 1), jnp.float32)

    def constant_score(params, h, item_ids):
        return jnp.zeros((h.shape[0], item_ids.shape[-1]), jnp.float32)

    oracle_model = make_evaluator(
        corpus, split, ScoringFns(oracle_encode, oracle_score), **settings
    )
    constant_model = make_evaluator(
        corpus, split, ScoringFns(constant_encode, constant_score), **settings
    )
    nan_model = make_evaluator(
        corpus, split, ScoringFns(oracle_encode, nan_elsewhere_score), **settings
    )
    for which in ev.SPLITS:
        oracle = oracle_model.evaluate({}, which)
        for protocol in ev.PROTOCOLS:
            assert oracle[f"{protocol}/hr@1"] == 1.0
            assert oracle[f"{protocol}/mrr"] == 1.0
        assert oracle["num_users"] == len(split.eval_users)

        constant = constant_model.evaluate({}, which)
        for protocol in ev.SAMPLED_PROTOCOLS:
            # Every negative ties with the target and ranks above it: rank = n for every user.
            assert constant[f"{protocol}/hr@1"] == 0.0
            assert constant[f"{protocol}/hr@{n}"] == 0.0
            assert constant[f"{protocol}/hr@{n + 1}"] == 1.0
            assert constant[f"{protocol}/ndcg@{n + 1}"] == pytest.approx(1 / math.log2(n + 2))
            assert constant[f"{protocol}/mrr"] == pytest.approx(1 / (n + 1))
        # Full ranking without the history: rank = the number of other candidates.
        ends = split.history_ends(corpus, which)
        history = ends - corpus.offsets[split.eval_users]  # no repeats: all distinct, none = target
        expected = ev.ranking_metrics(corpus.num_items - history - 1, (1, 5, n, n + 1))
        for metric, value in expected.items():
            assert constant[f"full/{metric}"] == pytest.approx(value)
        # NaN candidates never flatter: they count as ranked above the target, like ties.
        assert nan_model.evaluate({}, which) == constant


def test_num_users_sample_is_fixed_and_nan_is_loud():
    corpus = consecutive_corpus(seed=1)
    split = leave_one_out(corpus)
    settings = dict(max_len=6, protocols=("uniform100",), num_negatives=10, batch_size=8)
    popularity, params = scoring.popularity_fns(corpus)
    evaluator = make_evaluator(corpus, split, popularity, **settings)
    sample = evaluator.user_sample(10)
    assert len(sample) == 10 and len(set(sample)) == 10
    np.testing.assert_array_equal(sample, evaluator.user_sample(10))
    assert evaluator.evaluate(params, "valid", num_users=10)["num_users"] == 10

    def nan_score(params, h, item_ids):
        return jnp.full((h.shape[0], item_ids.shape[-1]), jnp.nan, jnp.float32)

    nan_model = make_evaluator(corpus, split, ScoringFns(popularity.encode, nan_score), **settings)
    with pytest.raises(FloatingPointError, match="NaN"):
        nan_model.evaluate(params, "valid")


def test_bad_settings_fail_early():
    corpus = consecutive_corpus()
    split = leave_one_out(corpus)
    with pytest.raises(ValueError, match="eval.batch_size"):
        make_evaluator(corpus, split, max_len=6, batch_size=12)
    with pytest.raises(ValueError, match="eval.protocols"):
        make_evaluator(corpus, split, max_len=6, protocols=("pop50",))
    assert jax.device_count() == 8


def test_bucketed_inputs_give_the_ranks_of_full_width_inputs(monkeypatch):
    """A real model: users encoded in length order, each batch cut to its bucket, rank every
    target as full-width inputs do, in the users' order."""

    corpus = random_corpus(70, num_items=30, max_length=14, seed=4, every_item=True)
    split = leave_one_out(corpus, "standard")
    model = small_model(corpus.vocab_size, 12, num_layers=2)
    params = model.init(
        {"params": jax.random.key(0)},
        jnp.ones((1, 12), jnp.int32),
        jnp.zeros((1, 1), jnp.int32),
        train=False,
    )["params"]
    fns = scoring.scoring_fns(model)
    widths = []
    encode = fns.encode

    def recording_encode(params, ids, mask_pos):
        widths.append(ids.shape[1])
        return encode(params, ids, mask_pos)

    settings = dict(max_len=12, protocols=("pop100", "full"), batch_size=16, num_negatives=20)
    plain = make_evaluator(corpus, split, fns, **settings)
    bucketed = make_evaluator(
        corpus, split, fns._replace(encode=recording_encode), buckets=(4, 8), **settings
    )
    rows = np.arange(len(split.eval_users))[::-1]  # any order comes back as asked
    for which in ("valid", "test"):
        want = plain.rank_targets(params, which, ("pop100", "full"), rows)
        got = bucketed.rank_targets(params, which, ("pop100", "full"), rows)
        for protocol in want:
            np.testing.assert_array_equal(got[protocol], want[protocol], err_msg=protocol)
    assert set(widths) <= {4, 8, 12} and min(widths) < 12  # some batches were cut
    assert ev.EvalConfig(max_len=12, buckets=(4, 8)).input_width(5) == 8
