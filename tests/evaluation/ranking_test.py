"""Tests for bert4rec_jax.evaluation.ranking: the jitted rankers on the mesh against brute
force, the Evaluator, buckets, loud NaNs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_corpus, make_evaluator, random_corpus, small_model

from bert4rec_jax import evaluation as ev
from bert4rec_jax import scoring, sharding
from bert4rec_jax.datasets.corpus import Corpus, leave_one_out
from bert4rec_jax.evaluation import ranking
from bert4rec_jax.scoring import ScoringFns

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
