"""The command lines as a user meets them: mistakes told in a few lines, a run's output readable
top to bottom, and the README's quick start printing what the README shows."""

import json
import pathlib
import re
import subprocess
import sys

import pytest
from helpers import device_env

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(module, *args, devices=1, **env):
    """`python -m <module> <args>` in a subprocess, on `devices` CPU devices; stdout is a pipe
    (not a terminal), as in CI and in `... > log`."""
    environ = device_env(devices)
    # Not the test session's settings: a user's shell sets none of them.
    for name in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL"):
        environ.pop(name, None)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )


# A port nothing listens on: a download from it fails at once, with or without a network.
CLOSED = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--config=configs/no_such.py"], ["--config=configs/no_such.py", "no such file"]),
        (["--config.num_train_step=10"], ["--config.num_train_step", '"num_train_steps"']),
        (["--config.dataset=file"], ["file.path is empty", "--config.file.path="]),
        (
            ["--config.num_train_steps=ten"],
            ["--config.num_train_steps=ten", "int()", "'ten'", "the field's type"],
        ),
        (["--no_such_flag=1"], ["'no_such_flag'", "--helpfull"]),
        (
            ["--config.dataset=beauty", "--config.manual_dir="],
            ["cannot download", "beauty.txt", "--config.manual_dir="],
        ),
    ],
    ids=[
        "missing config file",
        "misspelt field",
        "missing file.path",
        "value of the wrong type",
        "unknown flag",
        "offline beauty",
    ],
)
def test_config_mistakes_are_told_in_two_lines_with_exit_status_2(tmp_path, flags, expected):
    args = ["--config=configs/tiny.py", f"--workdir={tmp_path / 'work'}"]
    args += [f"--config.data_dir={tmp_path / 'data'}", *flags]  # a later --config= wins
    out = run("bert4rec_jax.train", *args, BERT4REC_PAPER_BASE_URL=CLOSED)
    printed = out.stdout + out.stderr
    assert out.returncode == 2, printed
    lines = printed.strip().splitlines()
    assert len(lines) <= 3, printed
    assert "Traceback" not in printed
    error = next(line for line in lines if ": error: " in line)
    for text in expected:
        assert text in error, error
    assert "--traceback" in lines[-1]
    assert not (tmp_path / "work").exists()


def test_traceback_flag_shows_where_a_mistake_was_raised(tmp_path):
    out = run(
        "bert4rec_jax.train",
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'work'}",
        "--config.num_train_step=10",
        "--traceback",
    )
    assert out.returncode != 0
    assert "Traceback (most recent call last)" in out.stderr
    assert 'Did you mean "num_train_steps"' in out.stderr


def log_messages(printed: str) -> list[str]:
    """The messages of absl's log lines ("I1130 15:35:32.54 123 file.py:52] message")."""
    return [
        m.group(1) for m in re.finditer(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+\] (.*)$", printed, re.M)
    ]


@pytest.mark.slow
def test_quick_start_prints_the_readme_table_and_nothing_noisy(tmp_path):
    # The README's quick start command, with 4 steps instead of 1,500 and one validation.
    workdir = tmp_path / "bert4rec_default"
    out = run(
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

    # The README's results table: its metrics as columns, one row per protocol, at the end.
    lines = printed.strip().splitlines()
    header, *rows = lines[-3:]
    assert header.split() == (
        "protocol hr@1 hr@5 hr@10 hr@20 ndcg@1 ndcg@5 ndcg@10 ndcg@20 mrr".split()
    )
    assert [row.split()[0] for row in rows] == ["pop100", "full"]
    assert "Test results of the parameters of step 4 (2000 users)" in lines[-4]
    results = json.loads((workdir / "test_results.json").read_text())
    assert {"pop100/ndcg@10", "full/ndcg@10", "full/mrr"} <= set(results)

    # The README's popularity rows, pop100 and full, come from `evaluate --model=popularity`.
    out = run("bert4rec_jax.evaluate", f"--workdir={workdir}", "--model=popularity")
    assert out.returncode == 0, out.stderr[-3000:]
    table = out.stdout.strip().splitlines()
    assert table[0] == "synthetic, test split, 2000 users, popularity baseline:"
    assert [row.split()[0] for row in table[2:4]] == ["pop100", "full"]
    assert table[4] == ""  # then the beyond-accuracy and history-length tables
