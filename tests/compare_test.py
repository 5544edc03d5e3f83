"""Tests of `python -m bert4rec_jax.compare`: pairing runs user by user, and refusing to."""

import dataclasses

import numpy as np
import pytest
from helpers import run_cli

from bert4rec_jax import compare
from bert4rec_jax.evaluation.per_user import UserResults

# ---- compare: pairing, refusals --------------------------------------------------------------


def make_results(ranks, *, users=None, targets=None, candidates=None, **info) -> UserResults:
    """Per-user results of one pop100 evaluation: ranks [n], the rest made up alike."""
    ranks = np.asarray(ranks, np.int64)
    n = len(ranks)
    users = np.arange(n) if users is None else np.asarray(users)
    info = {
        "dataset": "toy",
        "corpus": "abc",
        "split_mode": "standard",
        "split": "test",
        "num_items": 50,
        "ks": [1, 10],
        "protocols": {"pop100": {"num_negatives": 100, "candidate_seed": 1234}},
        **info,
    }
    return UserResults(
        info=info,
        users=users,
        raw_users=users,
        targets=np.asarray(targets if targets is not None else users % 7 + 1, np.int32),
        raw_targets=users,
        history_lengths=np.full(n, 5),
        target_known=np.ones(n, bool),
        ranks={"pop100": ranks},
        num_candidates={"pop100": np.full(n, 101)},
        candidates={
            "pop100": np.asarray(candidates if candidates is not None else users * 3, np.uint64)
        },
    )


def test_a_run_against_itself_reports_no_difference():
    run = ("A", make_results(np.random.default_rng(0).integers(0, 100, 500)))
    found = compare.compare([run], [run], metrics=["ndcg@10", "hr@1", "mrr"], resamples=200)
    for _, _, d in found.rows:
        assert d.difference == d.low == d.high == 0.0
        assert d.p_value == 1.0
        assert (d.better, d.worse, d.same) == (0, 0, 500)
    assert "| pop100 | ndcg@10 |" in compare.format_comparison(found)


def test_differences_counts_and_pooling_over_seeds():
    a = ("A", make_results([0, 5, 20, 3]))
    b1 = ("B1", make_results([0, 0, 30, 3]))
    b2 = ("B2", make_results([2, 0, 10, 3]))
    [(_, _, d)] = compare.compare([a], [b1, b2], metrics=["hr@1"], resamples=100).rows
    # hr@1 per user: A 1, 0, 0, 0; B averaged over its seeds 0.5, 1, 0, 0.
    assert d.mean_a == 0.25 and d.mean_b == 0.375 and d.difference == 0.125
    assert (d.better, d.worse, d.same) == (1, 1, 2)
    csv = compare.format_comparison(compare.compare([a], [b1], resamples=100), "csv")
    assert csv.splitlines()[0].startswith("protocol,metric,a,b,difference,low,high,p_value")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(corpus="xyz"), "different data: corpus fingerprint 'abc' in A, 'xyz' in B"),
        (dict(split="valid"), "A holds test results, B valid results"),
        (dict(targets=[1, 2, 3, 9]), "targets differ for 1 of 4 users between A and B"),
        (
            dict(targets=[9, 9, 9, 9], split_mode="temporal"),
            r"targets differ for 4 of 4 users between A and B \(split modes standard and temporal",
        ),
        (
            dict(
                candidates=[0, 3, 6, 10],
                protocols={"pop100": {"num_negatives": 100, "candidate_seed": 7}},
            ),
            r"pop100 candidates differ for 1 of 4 users between A and B "
            r"\(candidate_seed=1234 vs 7\)",
        ),
        (dict(users=[0, 1, 2, 5]), "A evaluated 4 users, B 4, 3 in common: pass --common_users"),
    ],
)
def test_runs_on_other_users_targets_or_candidates_are_refused(change, message):
    info_fields = {"corpus", "split", "split_mode", "protocols"}
    info = {k: v for k, v in change.items() if k in info_fields}
    arrays = {k: v for k, v in change.items() if k not in info_fields}
    a = ("A", make_results([0, 1, 2, 3]))
    b = ("B", make_results([0, 1, 2, 3], **arrays, **info))
    with pytest.raises(ValueError, match=message):
        compare.compare([a], [b], resamples=10)


def test_common_users_pairs_the_users_both_sides_evaluated():
    a = ("A", make_results([0, 1, 2, 3]))
    b = ("B", make_results([0, 50, 2], users=[0, 1, 2]))
    found = compare.compare([a], [b], metrics=["hr@10"], resamples=10, common_users=True)
    [(_, _, d)] = found.rows
    assert found.num_users == d.num_users == 3 and d.difference == pytest.approx(-1 / 3)


def test_command_line_compares_files_and_refuses_in_two_lines(tmp_path):
    a = make_results([0, 1, 2, 3])
    a.write(tmp_path / "a.parquet")
    changed = dataclasses.replace(a, candidates={"pop100": np.arange(4, dtype=np.uint64)})
    changed.write(tmp_path / "b.parquet")
    out = run_cli(
        "bert4rec_jax.compare", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"),
        check=False,
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("compare: error: pop100 candidates differ for 3 of 4 users")
    assert len(lines) == 2
