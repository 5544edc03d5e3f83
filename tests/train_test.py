"""Tests for `python -m bert4rec_jax.train` (train.py): the README's quick start, as a user runs
it."""

import json
import re

import pytest
from helpers import log_messages, run_as_user


@pytest.mark.slow
def test_quick_start_prints_the_readme_table_and_nothing_noisy(tmp_path):
    # The README's quick start command, with 4 steps instead of 1,500 and one validation.
    workdir = tmp_path / "bert4rec_default"
    out = run_as_user(
        "bert4rec_jax.train",
        "--config=configs/default.py",
        f"--workdir={workdir}",
        f"--config.data_dir={tmp_path / 'data'}",
        "--config.num_train_steps=4",
        "--config.warmup_steps=1",
        "--config.log_every_steps=2",
        "--config.eval.every_steps=4",
        "--config.checkpoint_every_steps=4",
    )
    printed = out.stdout + out.stderr
    assert out.returncode == 0, printed[-3000:]

    # Nothing a user cannot act on: no missing-TPU notice on a CPU, no TFDS banner or progress
    # bar cursor codes for a generated data set, no stray line under the table.
    assert "Unable to initialize backend" not in printed
    assert "Downloading and preparing dataset" not in printed
    assert "\x1b" not in printed and "\r" not in printed
    assert not re.search(r"^num_users", printed, re.M)
    # One short line per validation, naming the metric that picks the best step.
    [validation] = [m for m in log_messages(printed) if "validation" in m]
    assert validation == re.sub(r"\s+", " ", validation) and len(validation) < 100, validation
    assert re.fullmatch(r"step 4 validation: pop100/ndcg@10 \d\.\d{4} \(best .*\)", validation)

    # The results table (docs/results.md): its metrics as columns, a row per protocol, at the end.
    lines = printed.strip().splitlines()
    header, *rows = lines[-3:]
    assert header.split() == (
        "protocol hr@1 hr@5 hr@10 hr@20 ndcg@1 ndcg@5 ndcg@10 ndcg@20 mrr".split()
    )
    assert [row.split()[0] for row in rows] == ["pop100", "full"]
    assert "Test results of the parameters of step 4 (2000 users)" in lines[-4]
    results = json.loads((workdir / "test_results.json").read_text())
    assert {"pop100/ndcg@10", "full/ndcg@10", "full/mrr"} <= set(results)

    # The results' popularity rows, pop100 and full, come from `evaluate --model=popularity`.
    out = run_as_user("bert4rec_jax.evaluate", f"--workdir={workdir}", "--model=popularity")
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout.strip().splitlines()
    assert table[0] == "synthetic, test split, 2000 users, popularity baseline:"
    assert [row.split()[0] for row in table[2:4]] == ["pop100", "full"]
    assert table[4] == ""  # then the beyond-accuracy and history-length tables
