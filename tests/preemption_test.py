"""Surviving failures: SIGTERM stops cleanly and resumes exactly; bad checkpoints are handled.

The signal tests run real training processes and send them real signals.
"""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import checkpointed_config, copy_workdir

from bert4rec_jax import checkpointing, train_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def train_command(workdir, data_dir, *extra):
    return [
        sys.executable,
        "-m",
        "bert4rec_jax.train",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        "--config.num_train_steps=60",
        "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=0",  # only the stop and the end save
        "--config.eval.every_steps=0",
        *extra,
    ]


def start(command, log: pathlib.Path, devices: int = 1) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def wait_for(log: pathlib.Path, pattern: str, proc: subprocess.Popen, timeout: float = 300):
    """Waits until the log matches `pattern`; fails if the process ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return match
        if proc.poll() is not None:
            pytest.fail(f"process ended ({proc.returncode}) before {pattern!r}:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {pattern!r} within {timeout} s:\n{log.read_text()[-3000:]}")


def finish(proc: subprocess.Popen, log: pathlib.Path) -> str:
    assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    return log.read_text()


def assert_same_params(workdir_a, workdir_b):
    a, step_a = checkpointing.restore_params(workdir_a, "latest")
    b, step_b = checkpointing.restore_params(workdir_b, "latest")
    assert step_a == step_b
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_sigterm_saves_exits_0_and_the_resumed_run_is_bit_identical(tmp_path):
    data = tmp_path / "data"
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    finish(start(train_command(full, data), tmp_path / "full.log"), tmp_path / "full.log")

    log = tmp_path / "stopped.log"
    proc = start(train_command(stopped, data), log)
    wait_for(log, r"step 3/60 ", proc)
    proc.send_signal(signal.SIGTERM)
    printed = finish(proc, log)  # exit status 0
    step = int(re.search(r"Stopping at step (\d+) on SIGTERM", printed).group(1))
    assert 3 <= step < 60
    assert checkpointing.Checkpointer(stopped, keep=3).latest_step() == step
    assert not (stopped / train_lib.RESULTS_FILE).exists()

    log = tmp_path / "resumed.log"
    printed = finish(start(train_command(stopped, data), log), log)
    assert f"Resuming from checkpoint at step {step}" in printed
    assert_same_params(full, stopped)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step_on_sigterm(tmp_path):
    data, workdir = tmp_path / "data", tmp_path / "work"
    port = free_port()
    procs, logs = [], []
    for i in range(2):
        distributed = [
            "--distributed",
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            "--config.num_train_steps=100000",
        ]
        logs.append(tmp_path / f"process{i}.log")
        procs.append(start(train_command(workdir, data, *distributed), logs[-1]))
    try:
        for proc, log in zip(procs, logs, strict=True):
            wait_for(log, r"step 3/100000 ", proc)
        procs[0].send_signal(signal.SIGTERM)
        time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)
        stops = []
        for proc, log in zip(procs, logs, strict=True):
            printed = finish(proc, log)
            stops.append(int(re.search(r"Stopping at step (\d+) on SIG", printed).group(1)))
    finally:
        for proc in procs:
            proc.kill()
    assert stops[0] == stops[1]
    assert checkpointing.Checkpointer(workdir, keep=3).latest_step() == stops[0]


# ---- bad checkpoints ----------------------------------------------------------------------


def damage(step_dir: pathlib.Path) -> None:
    """Truncates every file of a checkpoint's train state to half its size."""
    for path in (step_dir / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def snapshot(directory: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_damaged_latest_checkpoint_is_skipped_and_kept_aside(tiny_stopped_run, tmp_path, caplog):
    config = tiny_stopped_run.config  # config.json stays as it is
    workdir = copy_workdir(tiny_stopped_run, tmp_path / "work")  # stopped at 10, saved 5 and 10
    damage(workdir / "checkpoints" / "10")
    with caplog.at_level("INFO"):
        assert train_lib.train_and_evaluate(config, str(workdir))  # finishes, with test results
    assert re.search(r"Skipping unusable checkpoint .*checkpoints/10\b", caplog.text)
    assert "Resuming from checkpoint at step 5" in caplog.text
    # The damaged files are kept, out of the way; training saved step 10 again.
    [kept] = (workdir / checkpointing.UNUSABLE_DIRNAME).iterdir()
    assert kept.name.startswith("10-")
    assert checkpointing.Checkpointer(workdir, keep=3).latest_step() == config.num_train_steps


def test_no_usable_checkpoint_is_an_error_that_changes_nothing(tiny_stopped_run, tmp_path):
    config = tiny_stopped_run.config  # config.json stays as it is
    workdir = copy_workdir(tiny_stopped_run, tmp_path / "work")  # stopped at 10, saved 5 and 10
    for step in (5, 10):
        damage(workdir / "checkpoints" / str(step))
    before = snapshot(workdir)
    with pytest.raises(checkpointing.CheckpointError, match=r"no usable checkpoint.*checkpoints"):
        train_lib.train_and_evaluate(config, str(workdir))
    assert snapshot(workdir) == before


@pytest.mark.parametrize(
    "field, value", [("model.hidden_size", 32), ("model.max_len", 24), ("synthetic.num_items", 70)]
)
def test_checkpoints_of_another_model_are_refused_before_any_step(
    tiny_stopped_run, tmp_path, field, value
):
    workdir = copy_workdir(tiny_stopped_run, tmp_path / "work")
    before = snapshot(workdir)
    with pytest.raises(checkpointing.CheckpointError, match=re.escape(f"{field}={value}")):
        train_lib.train_and_evaluate(checkpointed_config(tmp_path, **{field: value}), str(workdir))
    assert snapshot(workdir) == before
