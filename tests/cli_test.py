"""Tests for bert4rec_jax.cli: the command lines' mistakes told in a few lines (the flag or the
file and the fix), exit status 2, and --traceback for where it was raised."""

import pytest
from helpers import run_as_user

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
        (["--config.model.kind=gpt"], ["model.kind='gpt'", "bert4rec", "sasrec"]),
        (
            ["--config.model.kind=sasrec", "--config.model.user_features=add"],
            ["model.user_features", "model.kind='sasrec' is the published model"],
        ),
        (
            ["--config.split_mode=temporal"],
            ["split_mode='temporal' needs timestamps", "dataset='synthetic' has none"],
        ),
        (
            [
                "--config.dataset=ml-100k-raw",
                "--config.split_mode=temporal",
                "--config.temporal.test_start=soon",
            ],
            ["temporal.test_start='soon'", "q0.8"],
        ),
    ],
    ids=[
        "missing config file",
        "misspelt field",
        "missing file.path",
        "value of the wrong type",
        "unknown flag",
        "offline beauty",
        "unknown model kind",
        "a switch SASRec does not have",
        "temporal split without timestamps",
        "unparseable cut-off",
    ],
)
def test_config_mistakes_are_told_in_two_lines_with_exit_status_2(tmp_path, flags, expected):
    args = ["--config=configs/tiny.py", f"--workdir={tmp_path / 'work'}"]
    args += [f"--config.data_dir={tmp_path / 'data'}", *flags]  # a later --config= wins
    out = run_as_user("bert4rec_jax.train", *args, BERT4REC_PAPER_BASE_URL=CLOSED)
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
    out = run_as_user(
        "bert4rec_jax.train",
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'work'}",
        "--config.num_train_step=10",
        "--traceback",
    )
    assert out.returncode != 0
    assert "Traceback (most recent call last)" in out.stderr
    assert 'Did you mean "num_train_steps"' in out.stderr
