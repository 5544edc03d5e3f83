"""Tests for bert4rec_jax.recommend.files: the jobs' input files, read and streamed by user."""

import json
import re

import numpy as np
import pytest
from helpers import RANDOM_ITEMS

from bert4rec_jax import recommend


def test_input_files_name_the_bad_line(tmp_path):
    csv_file = tmp_path / "users.csv"
    csv_file.write_text('u1,sku-001, sku-002\n\nu2,"sku-003"\n')
    users, histories, labels = recommend.read_histories(csv_file)
    assert users == ["u1", "u2"]
    assert histories == [["sku-001", "sku-002"], ["sku-003"]]
    assert labels[1] == f"{csv_file}:3 (user 'u2')"
    jsonl = tmp_path / "users.jsonl"
    jsonl.write_text('{"user": 7, "history": [1, 2]}\n{"user": 8, "items": [3]}\n')
    with pytest.raises(recommend.InputFileError, match=re.escape(f"{jsonl}:2: expected an object")):
        recommend.read_histories(jsonl)


def test_interactions_csv_is_streamed_by_user_in_time_order(random_export, tmp_path):
    _, vocabulary, rec = random_export
    raw = vocabulary.tolist()
    csv_file = tmp_path / "interactions.csv"
    # u1's rows out of time order; u2 has only unknown items; u3 a single item.
    csv_file.write_text(
        "user,item,timestamp\n"
        f"u1,{raw[5]},30\nu1,{raw[7]},10\nu1,{raw[9]},20\n"
        "u2,no-such-item,5\n"
        f"u3,{raw[2]},1\n"
    )
    records = [r for r, _ in recommend.iter_interactions(csv_file)]
    assert [r[0] for r in records] == ["u1", "u2", "u3"]
    assert [list(map(str, r[1])) for r in records][0] == [str(raw[7]), str(raw[9]), str(raw[5])]
    out = tmp_path / "recs.jsonl"
    writer = recommend.OutputWriter(str(out), rec.vocabulary.dtype)
    summary = recommend.recommend_all(
        rec, recommend.iter_interactions(csv_file), writer, k=3, chunk_users=2
    )
    writer.close()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user"] for r in rows] == ["u1", "u2", "u3"]
    assert rows[1]["error"] == "no known item ids" and rows[1]["recommendations"] == []
    want = rec.recommend([[raw[7], raw[9], raw[5]]], k=3)[0]
    assert [x["item"] for x in rows[0]["recommendations"]] == [item for item, _ in want]
    assert (summary.users, summary.served, dict(summary.errors)) == (
        3, 2, {"no known item ids": 1}
    )  # fmt: skip


def test_interactions_split_across_batches_keep_time_order(random_export, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, vocabulary, _ = random_export
    rng = np.random.default_rng(0)
    users = np.repeat(["a", "b", "c", "d"], [5, 1, 7, 4])
    # a: in time order; b: one row; c: out of order with ties, across two batches; d: reversed.
    stamps = np.array([1, 2, 2, 3, 9, 4, 5, 1, 5, 0, 5, 2, 1, 9, 8, 7, 6])
    items = vocabulary[rng.integers(1, RANDOM_ITEMS + 1, size=len(users))]
    path = tmp_path / "interactions.parquet"
    pq.write_table(pa.table({"user": users, "item": items, "timestamp": stamps}), path)
    for batch_rows in (3, 6, 100):
        records = list(recommend.iter_interactions(path, batch_rows=batch_rows))
        assert [r[0] for r, _ in records] == ["a", "b", "c", "d"]
        assert [done for _, done in records] == [5, 6, 13, 17]
        for (user, history, _), _ in records:
            rows = np.flatnonzero(users == user)
            want = items[rows][np.argsort(stamps[rows], kind="stable")]
            assert history.tolist() == want.tolist(), (batch_rows, user)
