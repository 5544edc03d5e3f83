"""Tests for `python -m bert4rec_jax.recommend` (recommend/__main__.py): raw ids in and out,
files of histories, per-user status, strict mode."""

import json

import numpy as np
import pytest
from helpers import run_cli


@pytest.mark.slow
def test_recommend_cli_prints_raw_ids_on_one_device(tiny_export, tmp_path):
    exp, output, rec = tiny_export.exp, tiny_export.output, tiny_export.rec
    corpus = exp.corpus
    history = corpus.raw_item_ids[corpus.sequence(3)].tolist()
    printed = run_cli(
        "bert4rec_jax.recommend",
        f"--model={output}",
        "--history=" + ",".join(map(str, history + [999999])),
        "--k=5",
    )
    rows = [line.split() for line in printed.stdout.strip().splitlines()[1:]]
    want = rec.recommend([history], k=5)[0]
    assert [int(item) for _, item, _ in rows] == [item for item, _ in want]
    np.testing.assert_allclose([float(s) for *_, s in rows], [s for _, s in want], atol=1e-4)
    assert "Skipped 1 unknown item ids" in printed.stderr

    # A file of histories, JSON lines in and out; a bad line fails naming it.
    lines = [{"user": "a", "history": history}, {"user": 2, "history": history[:2] + ["x"]}]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = tmp_path / "results.jsonl"
    run_cli("bert4rec_jax.recommend", f"--model={output}", f"--input={requests}",
            f"--output={results}", "--k=5")  # fmt: skip
    written = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["user"] for r in written] == ["a", 2]
    assert [r["unknown_ids"] for r in written] == [0, 1]
    assert [r["item"] for r in written[0]["recommendations"]] == [item for item, _ in want]
    failed = run_cli("bert4rec_jax.recommend", f"--model={output}", f"--input={requests}",
                     "--strict", check=False)  # fmt: skip
    assert failed.returncode != 0
    assert f"{requests}:2 (user 2): item id 'x' is not in the model's vocabulary" in failed.stderr


@pytest.mark.slow
def test_bad_users_are_reported_and_the_rest_served(served, tmp_path):
    exp, output, rec = served.exp, served.output, served.rec
    corpus = exp.corpus
    good = [corpus.raw_item_ids[corpus.sequence(u)].tolist() for u in (0, 1, 2)]
    lines = [
        {"user": "a", "history": good[0]},
        {"user": "empty", "history": []},
        {"user": "b", "history": good[1]},
        {"user": "unknown", "history": [99999999, -5]},
        {"user": "c", "history": good[2] + [99999999]},
    ]
    result = rec.recommend([line["history"] for line in lines], k=10)
    assert result.errors == (None, "no item ids", None, "no known item ids", None)
    assert [len(items) for items in result] == [10, 0, 10, 0, 10]

    requests = tmp_path / "users.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "recs.jsonl"
    done = run_cli("bert4rec_jax.recommend", f"--model={output}", f"--input={requests}",
                   f"--output={out}", "--k=10")  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user"] for r in rows] == ["a", "empty", "b", "unknown", "c"]
    assert [r.get("error") for r in rows] == [None, "no item ids", None, "no known item ids", None]
    assert [len(r["recommendations"]) for r in rows] == [10, 0, 10, 0, 10]
    assert [r["item"] for r in rows[0]["recommendations"]] == [i for i, _ in result[0]]
    assert "5 users: 3 served, 2 without recommendations" in done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr  # not a terminal: plain lines
    strict = run_cli("bert4rec_jax.recommend", f"--model={output}", f"--input={requests}",
                     f"--output={out}", "--strict", check=False)  # fmt: skip
    assert strict.returncode == 1
    assert f"{requests}:2 (user 'empty') has no item ids" in strict.stderr
