"""Tests for bert4rec_jax.recommend.job: the all-users job, its chunks, progress and summary."""

import io
import json

import numpy as np
import pytest
from helpers import run_cli

from bert4rec_jax import recommend


def test_progress_redraws_on_a_terminal_and_prints_plain_lines_otherwise():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = recommend.Progress(100, "rows", stream)
        progress.update(50, 10)
        progress.update(100, 20, final=True)
    assert terminal.getvalue().startswith("\r[") and " ETA " in terminal.getvalue()
    assert terminal.getvalue().count("\n") == 1  # only the final line ends one
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert "100/100 rows, 20 users" in lines[1]


def test_a_strict_job_writes_the_chunks_before_the_bad_user(random_export, tmp_path):
    # Chunks overlap (one runs while the next is read), yet a refusal in the third chunk
    # leaves the first two written, as when they ran one after the other.
    _, vocabulary, rec = random_export
    good = vocabulary[[4, 5, 6]]
    records = [((f"u{i}", good, f"user {i}"), i + 1) for i in range(5)]
    records.append((("bad", np.asarray([], vocabulary.dtype), "user bad"), 6))
    out = tmp_path / "recs.jsonl"
    writer = recommend.OutputWriter(str(out), rec.vocabulary.dtype)
    with pytest.raises(recommend.EmptyHistoryError, match="user bad has no item ids"):
        recommend.recommend_all(rec, iter(records), writer, k=3, strict=True, chunk_users=2)
    writer.close()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user"] for r in rows] == ["u0", "u1", "u2", "u3"]


@pytest.mark.slow
def test_all_users_from_interactions_and_workdir(served, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    exp, workdir, output, rec = served.exp, served.workdir, served.output, served.rec
    corpus = exp.corpus
    users = corpus.raw_user_ids.tolist()
    histories = [corpus.raw_item_ids[corpus.sequence(u)] for u in range(corpus.num_users)]
    want = rec.recommend(histories, k=10)
    # An interactions table, grouped by user, its rows in reverse time within each user.
    table = pa.table(
        {
            "user": np.repeat(users, [len(h) for h in histories]),
            "item": np.concatenate([h[::-1] for h in histories]),
            "timestamp": np.concatenate([np.arange(len(h))[::-1] for h in histories]),
        }
    )
    pq.write_table(table, tmp_path / "interactions.parquet", row_group_size=5000)
    for source, out in (
        ([f"--input={tmp_path / 'interactions.parquet'}"], tmp_path / "a.parquet"),
        ([f"--workdir={workdir}", "--all_users"], tmp_path / "b.jsonl"),
    ):
        done = run_cli("bert4rec_jax.recommend", f"--model={output}", *source, f"--output={out}",
                       "--k=10", "--chunk_users=300")  # fmt: skip
        if out.suffix == ".parquet":
            rows = pq.read_table(out).to_pylist()
        else:
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            for r in rows:
                r["items"] = [x["item"] for x in r["recommendations"]]
        assert [r["user"] for r in rows] == users
        assert [r["items"] for r in rows] == [[i for i, _ in items] for items in want]
        assert f"{len(users):,} users: {len(users):,} served, 0 without" in done.stderr
