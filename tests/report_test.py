"""Tests of `python -m bert4rec_jax.report` on workdirs laid out as benchmarks/ablations.py's."""

import csv
import io
import json
import math

import pytest
from helpers import run_cli

from bert4rec_jax import report

T95_2 = 4.302652729911275  # Student-t, 2 degrees of freedom, 97.5%


def make_run(root, row, seed, ndcg, *, steps=100, minutes=2.0, popularity=None):
    """A finished ablation workdir: config.json, metrics.jsonl, test_results.json and
    ablation_run.json, as `benchmarks/ablations.py` leaves them."""
    workdir = root / row / f"seed{seed}"
    workdir.mkdir(parents=True)
    config = {
        "dataset": "ml-100k-raw",
        "seed": seed,
        "data_dir": f"/data/{seed}",  # paths do not split a row
        "num_train_steps": steps,
        "mesh": {"data": seed, "model": 1},
        "eval": {"metric": "pop100/ndcg@10", "batch_size": 512 + seed, "protocols": ["pop100"]},
    }
    (workdir / "config.json").write_text(json.dumps(config))
    rows = [
        {"step": 50, "time": 1000.0, "train/loss": 5.0},
        {"step": 50, "time": 1001.0, "valid/pop100/ndcg@10": ndcg / 3},
        {"step": 100, "time": 1060.0, "train/loss": 4.0},
        {"step": 100, "time": 1061.0, "valid/pop100/ndcg@10": ndcg / 2},
    ]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {"step": 100, "pop100/ndcg@10": ndcg, "pop100/coverage@10": 0.5, "run": {}}
    (workdir / "test_results.json").write_text(json.dumps(results))
    summary = {"train_seconds": 60 * minutes, "cpu_seconds": 120 * minutes}
    (workdir / "ablation_run.json").write_text(json.dumps(summary))
    if popularity is not None:
        record = {"step": None, "model": "popularity", "pop100/ndcg@10": popularity}
        (workdir / "eval_popularity_test.json").write_text(json.dumps(record))
    return workdir


@pytest.fixture
def ablations(tmp_path):
    for seed, ndcg in enumerate([0.30, 0.32, 0.34]):
        make_run(tmp_path, "ml100k", seed, ndcg, minutes=2.0 + seed, popularity=0.05)
    for seed, ndcg in enumerate([0.40, 0.44]):
        make_run(tmp_path, "ml100k-x2", seed, ndcg, steps=200, minutes=4.0)
    return tmp_path


def test_rows_group_seeds_by_config_with_t_intervals(ablations):
    runs = [report.load_run(p) for p in report.find_runs([ablations])]
    assert len(runs) == 5
    rows = report.table_rows(runs, show_config=True)
    assert [r.label for r in rows] == ["ml100k", "ml100k-x2", "popularity (ml-100k-raw)"]
    assert [len(r.runs) for r in rows] == [3, 2, 1]
    assert rows[1].config == "num_train_steps=200"

    metrics = ["valid/pop100/ndcg@10", "test/pop100/ndcg@10", "test/pop100/coverage@10"]
    table = report.format_table(rows, metrics).splitlines()
    assert table[0].split(" | ")[2:5] == [
        "valid pop100 NDCG@10", "test pop100 NDCG@10", "test pop100 coverage@10"
    ]  # fmt: skip
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    half = T95_2 * 0.02 / math.sqrt(3)  # the seeds' standard deviation is 0.02
    assert cells[:4] == ["ml100k", "3", f"{0.16:.4f} ± {half / 2:.4f}", f"0.3200 ± {half:.4f}"]
    assert cells[4] == "0.5000 ± 0.0000"
    assert cells[5] == f"3.0 ± {T95_2 / math.sqrt(3):.1f}"  # minutes 2, 3, 4
    assert cells[6] == f"6.0 ± {2 * T95_2 / math.sqrt(3):.1f}"  # CPU minutes
    baseline = [c.strip() for c in table[4].strip("|").split("|")]
    assert baseline[:4] == ["popularity (ml-100k-raw)", "baseline", "", "0.0500"]

    parsed = list(csv.DictReader(io.StringIO(report.format_table(rows, metrics, "csv"))))
    assert parsed[1]["run"] == "ml100k-x2"
    assert float(parsed[1]["test/pop100/ndcg@10"]) == pytest.approx(0.42)
    assert float(parsed[1]["train_minutes"]) == 4.0
    assert float(parsed[1]["train_minutes half_width"]) == 0.0


def test_runs_missing_a_number_say_how_many_have_it(ablations):
    (ablations / "ml100k" / "seed2" / "test_results.json").unlink()
    (ablations / "ml100k" / "seed2" / "ablation_run.json").unlink()  # times from metrics.jsonl
    rows = report.table_rows([report.load_run(p) for p in report.find_runs([ablations])])
    table = report.format_table(rows, ["test/pop100/ndcg@10"])
    # Minutes 2 and 3 from the summaries, 1 from metrics.jsonl; CPU minutes only from those.
    assert "| ml100k | 3 | 0.3100 ± 0.1271 (2 of 3) | ~2.0 ± 2.5 | 5.0 ± 12.7 (2 of 3) |" in table
    assert "~: from metrics.jsonl" in table


def test_command_line_prints_the_table_and_refuses_a_bad_metric(ablations):
    out = run_cli("bert4rec_jax.report", str(ablations / "ml100k"), str(ablations / "ml100k-x2"))
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| run | seeds | valid pop100 NDCG@10 |")
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| ml100k", "| ml100k-x2", "| popularity (ml-100k-raw)"
    ]  # fmt: skip
    bad = run_cli("bert4rec_jax.report", str(ablations), "--metrics=pop100/ndcg@10", check=False)
    assert bad.returncode == 2
    assert "must be test/<key> or valid/<key>" in bad.stderr.splitlines()[0]


def test_cut_offs_split_rows_only_on_the_temporal_split(tmp_path):
    def with_config(workdir, **extra):
        config = json.loads((workdir / "config.json").read_text())
        (workdir / "config.json").write_text(json.dumps({**config, **extra}))

    # A leave-one-out run from before the temporal fields existed, and one after: one row.
    make_run(tmp_path, "loo", 0, 0.3)
    with_config(make_run(tmp_path, "loo", 1, 0.3), temporal={"valid_start": "q0.8"})
    # On the temporal split the cut-offs are what is evaluated: two rows.
    for seed, start in enumerate(["q0.8", "q0.7"]):
        workdir = make_run(tmp_path, f"temporal-{start}", seed, 0.2)
        with_config(workdir, split_mode="temporal", temporal={"valid_start": start})
    runs = [report.load_run(p) for p in report.find_runs([tmp_path])]
    rows = report.table_rows(runs)
    assert sorted(len(r.runs) for r in rows) == [1, 1, 2]
