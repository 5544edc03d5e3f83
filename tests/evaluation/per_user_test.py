"""Tests of per-user results (evaluation/per_user.py) and the metrics beyond accuracy."""

import dataclasses
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import copy_workdir, run_cli

from bert4rec_jax import evaluation as ev
from bert4rec_jax import sharding
from bert4rec_jax import workdir as workdir_lib
from bert4rec_jax.datasets.corpus import corpus_from_sequences, leave_one_out
from bert4rec_jax.evaluation import metrics, per_user
from bert4rec_jax.scoring import ScoringFns

# ---- beyond accuracy and history buckets, by hand -------------------------------------------


def test_training_popularity_counts_users_of_the_training_sequences():
    # Dense ids equal raw ids (1..4 all used). User 0 trains on [1, 2, 1] (1 twice: one user),
    # user 1 on [1], user 2 (too short to evaluate) on all of [2, 4]; 3 is never trained on.
    sequences = [[1, 2, 1, 3, 4], [1, 3, 2], [2, 4]]
    offsets = np.cumsum([0] + [len(s) for s in sequences])
    corpus = corpus_from_sequences("hand", np.arange(3), offsets, np.concatenate(sequences))
    counts, users = metrics.training_popularity(corpus, leave_one_out(corpus))
    assert counts.tolist() == [0, 2, 2, 0, 1]
    assert users == 3


def test_coverage_popularity_and_novelty_hand_computed():
    counts = np.array([0, 3, 1, 1, 0])  # users per item; 4 training users
    # Sorted counts 0, 1, 1, 3: item 1 has 3 below it (87.5), items 2 and 3 one below and two
    # equal (50), item 4 none below and itself (12.5).
    np.testing.assert_allclose(metrics.popularity_percentiles(counts), [0, 87.5, 50, 50, 12.5])
    top = np.array([[1, 2], [1, 0]])  # the second user had one candidate (0 = padding)
    got = metrics.beyond_accuracy(top, ks=(1, 2), counts=counts, num_train_users=4)
    assert got["coverage@1"] == 1 / 4  # item 1 only
    assert got["coverage@2"] == 2 / 4  # items 1 and 2
    assert got["popularity@1"] == 87.5
    assert got["popularity@2"] == pytest.approx((87.5 + 50 + 87.5) / 3)
    assert got["novelty@1"] == pytest.approx(math.log2(4 / 3))
    assert got["novelty@2"] == pytest.approx((2 * math.log2(4 / 3) + math.log2(4 / 1)) / 3)
    # An item no one trained on counts as seen once: finite, the largest value.
    assert metrics.beyond_accuracy(np.array([[4]]), (1,), counts, 4)["novelty@1"] == 2.0
    with pytest.raises(ValueError, match="cannot give k=3"):
        metrics.beyond_accuracy(top, (3,), counts, 4)


def test_metrics_by_history_length_bucket():
    ranks = {"pop100": np.array([0, 12, 3]), "full": np.array([5, 0, 40])}
    got = metrics.by_history(ranks, history_lengths=np.array([3, 7, 60]), ks=(10,))
    assert got["history=1-5/num_users"] == got["history=6-20/num_users"] == 1
    assert got["history=21-50/num_users"] == 0
    assert "history=21-50/pop100/hr@10" not in got  # an empty bucket has its count only
    assert got["history=1-5/pop100/hr@10"] == 1 and got["history=6-20/pop100/hr@10"] == 0
    assert got["history=51+/pop100/ndcg@10"] == pytest.approx(1 / math.log2(5))
    assert got["history=51+/full/mrr"] == pytest.approx(1 / 41)
    assert got["history=6-20/full/ndcg@10"] == 1.0


def test_fingerprints_ignore_order_and_tell_sets_apart():
    rows = np.array([0, 0, 0, 1, 1, 1, 3])
    items = np.array([5, 9, 2, 2, 5, 9, 7])
    got = per_user.set_fingerprints(rows, items, num_rows=5, salt="x")
    assert got[0] == got[1]  # the same set in another order
    assert len({got[0], got[2], got[3]}) == 3  # another set, the empty set (row 2)
    assert got[2] == got[4]  # both empty
    assert per_user.set_fingerprints(rows, items, 5, "y")[0] != got[0]  # other candidates rule


# ---- the evaluator's per-user results -------------------------------------------------------


def _toy():
    """A corpus (string user ids), and scores from a fixed random item table."""
    rng = np.random.default_rng(0)
    num_items = 40
    sequences = [
        list(rng.choice(num_items, rng.integers(3, 12), replace=False) + 1) for _ in range(30)
    ]
    sequences += [[i, i % num_items + 1] for i in range(1, num_items + 1, 2)]
    offsets = np.cumsum([0] + [len(s) for s in sequences])
    users = np.array([f"u{i}" for i in range(len(sequences))], dtype=object)
    corpus = corpus_from_sequences("toy", users, offsets, np.concatenate(sequences))
    table = rng.normal(size=(corpus.vocab_size, 4)).astype(np.float32)

    def encode(params, ids, mask_pos):
        return params["table"][ids].sum(axis=1)  # [B, 4]

    def score(params, h, item_ids):
        rows = params["table"][item_ids]  # [C, 4] or [B, C, 4]
        return h @ rows.T if rows.ndim == 2 else jnp.einsum("bh,bch->bc", h, rows)

    return corpus, table, ScoringFns(encode, score)


def test_user_results_lists_ranks_and_candidates_match_brute_force(tmp_path):
    corpus, table, fns = _toy()
    split = leave_one_out(corpus)
    config = ev.EvalConfig(
        max_len=8, protocols=("pop100", "full"), num_negatives=10, ks=(1, 5), batch_size=8,
        item_chunk=16,  # three chunks: the running top-k merges across them
    )  # fmt: skip
    evaluator = ev.Evaluator(corpus, split, config, fns, mesh=sharding.make_mesh())
    params = {"table": jnp.asarray(table)}
    got = evaluator.user_results(params, "test")
    plain = evaluator.user_results(params, "test", lists=False)
    assert plain.top == {} and plain.metrics() == got.metrics() == evaluator.evaluate(
        params, "test"
    )

    ids, _ = evaluator.inputs("test")
    scores = table[ids].sum(axis=1) @ table[1 : corpus.num_items + 1].T  # [users, items]
    for i, user in enumerate(split.eval_users):
        history = set(corpus.sequence(user)[:-1].tolist()) - {int(split.test_targets[i])}
        best = [j + 1 for j in np.argsort(-scores[i], kind="stable") if j + 1 not in history]
        assert got.top["full"][i].tolist() == best[:5]
        assert got.num_candidates["full"][i] == corpus.num_items - len(history)
        assert got.ranks["full"][i] == best.index(split.test_targets[i])
        candidates = evaluator.candidates("test", "pop100")[i]
        order = candidates[np.argsort(-scores[i, candidates - 1], kind="stable")]
        assert got.top["pop100"][i].tolist() == order[:5].tolist()
        assert got.ranks["pop100"][i] == order.tolist().index(split.test_targets[i])
    assert (got.num_candidates["pop100"] == 11).all()
    assert got.raw_users.tolist() == [f"u{u}" for u in split.eval_users]
    assert got.history_lengths.tolist() == (corpus.lengths[split.eval_users] - 1).tolist()

    path = tmp_path / "users.parquet"
    got.with_info(step=7).write(path)
    back = per_user.UserResults.read(path)
    assert back.info == {**got.info, "step": 7}
    assert back.metrics() == got.metrics() and back.by_history() == got.by_history()
    for name in ("users", "raw_users", "targets", "raw_targets", "history_lengths"):
        assert getattr(back, name).tolist() == getattr(got, name).tolist(), name
    for protocol in got.protocols:
        for name in ("ranks", "num_candidates", "candidates", "top"):
            np.testing.assert_array_equal(
                getattr(back, name)[protocol], getattr(got, name)[protocol]
            )
    # Another candidate seed: other pop100 candidates; full ranking's stay the same.
    other = ev.Evaluator(
        corpus, split, dataclasses.replace(config, candidate_seed=7), fns, mesh=evaluator.mesh
    ).user_results(params, "test", lists=False)
    assert (other.candidates["pop100"] != got.candidates["pop100"]).all()
    np.testing.assert_array_equal(other.candidates["full"], got.candidates["full"])


def test_a_file_that_is_not_per_user_results_is_refused(tmp_path):
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="x.parquet is not a readable Parquet file"):
        per_user.UserResults.read(tmp_path / "x.parquet")


# ---- what training and `evaluate` write -----------------------------------------------------


def test_training_per_user_files_give_its_results_exactly(tiny_finished_run):
    workdir = tiny_finished_run.workdir
    results = workdir_lib.read_results(workdir)
    users = per_user.UserResults.read(workdir / workdir_lib.TEST_USERS_FILE)
    assert users.info["step"] == results["step"] and users.info["split"] == "test"
    assert users.info["config_hash"] == results["run"]["config_hash"]
    recomputed = {**users.metrics(), **users.by_history()}
    assert recomputed == {k: results[k] for k in recomputed}  # exactly, not approximately
    assert {"pop100/coverage@10", "full/novelty@20", "full/popularity@1"} <= set(results)
    assert set(users.top) == {"pop100", "full"}

    # Validation: the best validated step's users, as metrics.jsonl logged them.
    valid = per_user.UserResults.read(workdir / workdir_lib.VALID_USERS_FILE)
    assert valid.info["step"] == results["step"] and valid.top == {}
    logged = [json.loads(line) for line in (workdir / workdir_lib.METRICS_FILE).open()]
    [row] = [r for r in logged if r["step"] == valid.info["step"] and "valid/num_users" in r]
    assert {f"valid/{k}": v for k, v in valid.metrics().items()} == {
        k: v for k, v in row.items() if k.startswith("valid/")
    }


@pytest.mark.slow
def test_evaluate_writes_per_user_results_that_give_its_numbers(tiny_finished_run, tmp_path):
    workdir = copy_workdir(tiny_finished_run, tmp_path / "work")  # evaluate writes into it
    run_cli("bert4rec_jax.evaluate", f"--workdir={workdir}", "--model=popularity")
    record = json.loads((workdir / workdir_lib.eval_results_file("popularity", "test")).read_text())
    users = per_user.UserResults.read(workdir / workdir_lib.eval_users_file("popularity", "test"))
    assert users.info["model"] == "popularity" and users.info["step"] is None
    assert {**users.metrics(), **users.by_history()}.items() <= record.items()
    # The baseline lists items most popular first: the deeper the list, the less popular its
    # items on average and the more of the catalogue it covers.
    assert record["full/popularity@1"] > record["full/popularity@5"] > record["full/popularity@20"]
    assert record["full/coverage@1"] < record["full/coverage@5"] < record["full/coverage@20"]
