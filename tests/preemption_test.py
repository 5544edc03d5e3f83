"""Tests for bert4rec_jax.preemption: SIGTERM stops cleanly at any phase and resumes exactly.

The signal tests run real training processes and send them real signals.
"""

import json
import pathlib
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from helpers import device_env, free_port, snapshot

from benchmarks import faults as crash_resume
from bert4rec_jax import checkpointing, preemption
from bert4rec_jax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def start(command, log: pathlib.Path, devices: int = 1, env=None) -> subprocess.Popen:
    env = device_env(devices, base=env)
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


def wait_until_catching(proc: subprocess.Popen, sig: int, timeout: float = 60) -> None:
    """Waits until the process has a handler for `sig` (Linux: SigCgt in /proc/<pid>/status).

    Before that, in the interpreter's own start, a signal ends any Python process.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        status = pathlib.Path(f"/proc/{proc.pid}/status").read_text()
        caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16)
        if caught >> (sig - 1) & 1:
            return
        time.sleep(0.002)
    pytest.fail(f"process {proc.pid} did not catch signal {sig} within {timeout} s")


def finish(proc: subprocess.Popen, log: pathlib.Path) -> str:
    assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    return log.read_text()


# ---- SIGTERM at every phase of a run ------------------------------------------------------

# Six steps, validated and saved every three: both a best/ and a final checkpoint to stop around.
SHORT_RUN = {
    "num_train_steps": 6,
    "warmup_steps": 1,
    "log_every_steps": 1,
    "checkpoint_every_steps": 3,
    "eval.every_steps": 3,
    "eval.protocols": "pop100",
}


class ShortRun:
    """The uninterrupted short run every stopped run is compared with, and how to start one.

    `pipeline` is the input pipeline of every start. "device" imports no TensorFlow, ~5 s of CPU
    less per start; the tests below use it unless they name tf.data (the default), which the
    step_2 SIGTERM case below, multiprocess_test's two processes and cli_test's quick start
    run.
    """

    def __init__(self, root: pathlib.Path, pipeline: str = "device"):
        self.root = root
        self.pipeline = pipeline
        self.data = root / "data"
        crash_resume.prepare_data(self.data)  # once: no start prepares it while being stopped
        self.env = device_env(1)  # with the session's compilation cache, as every start
        self.workdir = root / "reference"
        self.run(self.workdir, root / "reference.log")
        self.results = json.loads((self.workdir / workdir_lib.RESULTS_FILE).read_text())

    def command(self, workdir, **overrides):
        overrides = {**SHORT_RUN, "input.pipeline": self.pipeline, **overrides}
        return crash_resume.train_command(workdir, self.data, overrides)

    def run(self, workdir, log, phase: str | None = None, **overrides) -> str:
        """Runs to its exit (which must be 0), SIGTERMed at `phase` (preemption.py's test hook)."""
        env = dict(self.env)
        if phase:
            env[preemption.TEST_HOOK_ENV] = phase
        return finish(start(self.command(workdir, **overrides), log, env=env), log)


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    """short_runs(pipeline): the module's ShortRun of that input pipeline, made on first use."""
    runs = {}

    def get(pipeline: str) -> ShortRun:
        if pipeline not in runs:
            runs[pipeline] = ShortRun(tmp_path_factory.mktemp(f"short_run_{pipeline}"), pipeline)
        return runs[pipeline]

    return get


@pytest.fixture(scope="module")
def short_run(short_runs) -> ShortRun:
    return short_runs("device")


# A stop at `startup` or `data` writes nothing, so the start after it begins exactly as a fresh
# start would: those two stops run first in the same workdir as the `compile` case, and the
# stopped starts after them take the place of their reruns (each case's assertions still hold for
# each phase; two whole runs fewer).
# Likewise after the end: the rerun of a run stopped after its final save trains nothing and goes
# on to restore the best parameters and to test them, as a run that trained does; so that rerun
# is the one stopped at `best_restore`, and its rerun the one stopped at `test_eval`, which
# finishes (two whole trainings fewer than a fresh run for each).
@pytest.mark.slow
@pytest.mark.parametrize(
    "phases, said, pipeline",
    [
        (
            ("startup", "data", "compile"),
            (
                "before the run began; nothing written",
                "before training began",
                "Stopping at step 1 on SIGTERM",
            ),
            "device",
        ),
        # The default input pipeline: a stop while tf.data's threads are producing batches, and
        # a rerun whose pipeline resumes at the step after the checkpoint.
        (("step_2",), ("Stopping at step 3 on SIGTERM",), "tf.data"),
        (
            ("final_save", "best_restore", "test_eval"),
            (
                "after step 6's checkpoint; rerun the same command to test",
                "before the test evaluation; rerun the same command",
                "SIGTERM came during the test evaluation; finished it first",
            ),
            "device",
        ),
    ],
    ids=["startup, data, compile", "step_2, tf.data", "final_save, best_restore, test_eval"],
)
def test_sigterm_at_any_phase_exits_0_and_a_rerun_ends_with_the_same_results(
    short_runs, tmp_path, phases, said, pipeline
):
    short_run = short_runs(pipeline)
    workdir = tmp_path / "work"
    printed = []
    for phase, expected in zip(phases, said, strict=True):
        printed.append(short_run.run(workdir, tmp_path / f"stopped_{phase}.log", phase=phase))
        assert expected in printed[-1]
        if phase in ("startup", "data"):
            assert not workdir.exists()  # nothing written: the next start is a fresh one
        if phase != "test_eval":
            assert not (workdir / workdir_lib.RESULTS_FILE).exists()
    if phases[-1] != "test_eval":
        printed.append(short_run.run(workdir, tmp_path / "rerun.log"))
    assert json.loads((workdir / workdir_lib.RESULTS_FILE).read_text()) == short_run.results
    # The case trained with the pipeline it names.
    assert any(f", {pipeline} input, " in text for text in printed)
    if phases[0] == "final_save":  # the reruns trained nothing
        assert all("Nothing to train" in text for text in printed[1:])


@pytest.mark.slow
def test_sigterm_from_outside_at_any_moment_exits_0_and_the_rerun_is_the_same(short_run, tmp_path):
    """A real signal from another process, at whatever phase it lands, and then one more."""
    workdir = tmp_path / "work"
    for i, after in enumerate((None, r"step 2/6 ")):
        log = tmp_path / f"stopped{i}.log"
        proc = start(short_run.command(workdir), log, env=short_run.env)
        if after:
            wait_for(log, after, proc)
        else:  # as soon as Python runs train.py's first lines, while it imports JAX
            wait_until_catching(proc, signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        finish(proc, log)
    if not (workdir / workdir_lib.RESULTS_FILE).exists():
        short_run.run(workdir, tmp_path / "rerun.log")
    assert json.loads((workdir / workdir_lib.RESULTS_FILE).read_text()) == short_run.results
    assert_same_params(short_run.workdir, workdir)


@pytest.mark.slow
def test_results_of_an_earlier_run_are_set_aside_when_its_checkpoints_are_gone(short_run, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(short_run.workdir, workdir)
    shutil.rmtree(workdir / "checkpoints")
    (workdir / "checkpoints").mkdir()
    old_best = snapshot(workdir / "best")
    # Another learning rate: a new lineage, with its own best parameters and results.
    printed = short_run.run(workdir, tmp_path / "rerun.log", learning_rate=0.01)
    assert re.search(r"best and test_results.json in .* came from an earlier run", printed)
    [aside] = (workdir / workdir_lib.SET_ASIDE_DIR).iterdir()
    assert snapshot(aside / "best") == old_best
    assert json.loads((aside / workdir_lib.RESULTS_FILE).read_text()) == short_run.results
    results = workdir_lib.read_results(workdir)
    assert results["run"]["checkpoint_step"] == 6
    assert results["run"]["config_hash"] != short_run.results["run"]["config_hash"]
    assert results != short_run.results


def assert_same_params(workdir_a, workdir_b):
    a, step_a = checkpointing.restore_params(workdir_a, "latest")
    b, step_b = checkpointing.restore_params(workdir_b, "latest")
    assert step_a == step_b
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# Runs until stopped, logging every step; only the stop and the end save.
TWO_PROCESS_RUN = {
    "input.pipeline": "device",  # no TensorFlow to import (ShortRun says why)
    "num_train_steps": 100000,
    "log_every_steps": 1,
    "checkpoint_every_steps": 0,
    "eval.every_steps": 0,
}


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
        ]
        command = crash_resume.train_command(workdir, data, TWO_PROCESS_RUN) + distributed
        logs.append(tmp_path / f"process{i}.log")
        procs.append(start(command, logs[-1]))
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
