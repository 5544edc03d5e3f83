"""Acceptance tests of the temporal split (issue 34) on a hand-made log: cut-offs, targets, who
is evaluated, and what the candidates may hold."""

import numpy as np
import pytest
from helpers import make_corpus

from bert4rec_jax.datasets import corpus as corpus_lib
from bert4rec_jax.evaluation import candidates as cand

DAY = 86_400
# Day d is 1970-01-01 + d days: cut-offs at day 5 ("1970-01-06") and day 8 ("1970-01-09").
VALID_START, TEST_START = "1970-01-06", "1970-01-09"
LOG = [
    # (items, days)
    ([1, 2, 3, 4, 5], [1, 2, 5, 6, 9]),  # trains on 1 2; validates on 3 (at the cut-off); tests 5
    ([2, 3, 6], [1, 3, 4]),  # nothing after the first cut-off: trains only
    ([1, 6, 7], [2, 6, 7]),  # validates on 6; nothing after the second cut-off: never tested
    ([3, 8], [6, 9]),  # no history before its validation target; tested on 8, never trained on
]


@pytest.fixture
def log():
    return make_corpus(
        [items for items, _ in LOG], name="log", times=[[d * DAY for d in days] for _, days in LOG]
    )


@pytest.fixture
def split(log):
    return corpus_lib.temporal_split(log, VALID_START, TEST_START)


def test_no_training_interaction_at_or_after_the_first_cut_off(log, split):
    t1, _ = split.cutoffs
    assert t1 == 5 * DAY
    for user in range(log.num_users):
        trained = slice(log.offsets[user], split.train_ends[user])
        assert (log.timestamps[trained] < t1).all()
        # ... and everything before it is trained on (a prefix: times are sorted).
        rest = slice(split.train_ends[user], log.offsets[user + 1])
        assert (log.timestamps[rest] >= t1).all()
    assert [split.train_sequence(log, u).tolist() for u in range(4)] == [[1, 2], [2, 3, 6], [1], []]


def test_targets_and_histories_are_as_specified(log, split):
    assert split.users("valid").tolist() == [0, 2]
    assert split.targets("valid").tolist() == [3, 6]  # each user's first in [t1, t2)
    valid_histories = [
        log.items[log.offsets[u] : e].tolist()
        for u, e in zip(split.users("valid"), split.history_ends(log, "valid"), strict=True)
    ]
    assert valid_histories == [[1, 2], [1]]
    assert split.users("test").tolist() == [0, 3]
    assert split.targets("test").tolist() == [5, 8]  # each user's first at or after t2
    test_histories = [
        log.items[log.offsets[u] : e].tolist()
        for u, e in zip(split.users("test"), split.history_ends(log, "test"), strict=True)
    ]
    assert test_histories == [[1, 2, 3, 4], [3]]  # the validation period included


def test_users_with_nothing_after_a_cut_off_are_not_evaluated(split):
    assert 1 not in split.users("valid") and 1 not in split.users("test")
    assert 2 not in split.users("test")  # validated, but nothing after the second cut-off
    assert 3 not in split.users("valid")  # nothing before its first interaction after t1


@pytest.mark.parametrize("which", ["valid", "test"])
@pytest.mark.parametrize("protocol", ["pop100", "uniform100"])
def test_candidates_exclude_items_first_seen_after_the_cut_off(log, split, which, protocol):
    known = {"valid": {1, 2, 3, 6}, "test": {1, 2, 3, 4, 6, 7}}[which]
    drawn = cand.draw_candidates(log, split, which, protocol, num_negatives=10, seed=0)
    assert drawn[:, 0].tolist() == split.targets(which).tolist()
    for row, (user, end) in enumerate(
        zip(split.users(which), split.history_ends(log, which), strict=True)
    ):
        negatives = set(drawn[row, 1:].tolist()) - {corpus_lib.PAD_ID}
        seen_by_user = set(log.items[log.offsets[user] : end + 1].tolist())
        # Every known item outside what the user had done by then, and nothing else.
        assert negatives == known - seen_by_user, (which, row)


def test_popularity_counts_only_what_came_before_the_cut_off(log, split):
    valid = split.known_popularity(log, "valid")
    assert valid.tolist() == [0, 2, 2, 1, 0, 0, 1, 0, 0]  # items 1..8 before day 5
    assert split.known_popularity(log, "test").sum() == (log.timestamps < 8 * DAY).sum()


def test_quantile_cut_offs_and_the_candidate_file_names_them(log, tmp_path):
    split = corpus_lib.temporal_split(log, "q0.5", "q0.75")
    times = np.sort(log.timestamps)
    assert split.cutoffs == (times[6], times[9])  # 13 times: the "higher" of 6 and 9 of 12
    other = corpus_lib.temporal_split(log, VALID_START, TEST_START)
    paths = {
        cand.candidates_path(tmp_path, log, s, "test", "pop100", 10, 0) for s in (split, other)
    }
    assert len(paths) == 2


@pytest.mark.parametrize(
    "valid_start, test_start, message",
    [
        ("yesterday", TEST_START, "temporal.valid_start='yesterday': expected a date"),
        (VALID_START, "q1.5", "temporal.test_start='q1.5': a quantile"),
        (TEST_START, VALID_START, "temporal.test_start='1970-01-06' comes before"),
        ("1970-01-01", TEST_START, "leaves no training interaction"),
        (VALID_START, "1970-02-01", "temporal.test_start='1970-02-01' leaves no user"),
    ],
)
def test_bad_cut_offs_are_refused_naming_the_field(log, valid_start, test_start, message):
    with pytest.raises(ValueError, match=message):
        corpus_lib.temporal_split(log, valid_start, test_start)


def test_a_source_without_timestamps_is_refused():
    untimed = make_corpus([[1, 2, 3]], name="paper")
    with pytest.raises(ValueError, match="needs timestamps.*'paper' has none"):
        corpus_lib.make_split(untimed, "temporal", VALID_START, TEST_START)


def test_leave_one_out_is_unchanged_by_the_generalised_split(log):
    split = corpus_lib.make_split(log, "standard")
    assert split.users("valid") is split.eval_users and split.users("test") is split.eval_users
    ends = log.offsets[split.eval_users + 1]
    assert split.history_ends(log, "valid").tolist() == (ends - 2).tolist()
    assert split.cutoff("test") is None and split.known_popularity(log, "test") is log.popularity
