"""Crashes: a training process SIGKILLed at random moments, one of them in the middle of an
asynchronous checkpoint save, and restarted each time with the same command, ends with the same
bits as a run that was never interrupted.

The kill-and-restart machinery is benchmarks/faults.py's (benchmarks/crash_resume.py makes
20 such kills).
"""

import json
import signal

import jax
import numpy as np
import pytest
from helpers import device_env

from benchmarks import faults as crash_resume
from bert4rec_jax import checkpointing
from bert4rec_jax import workdir as workdir_lib

STEPS, EVERY = 24, 2


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_bits(tmp_path):
    data_dir = tmp_path / "data"
    crash_resume.prepare_data(data_dir)  # once, so that every start reads the corpus cache
    # The session's compilation cache (tests/conftest.py, in os.environ): the reference run and
    # every restart read the programs the other tests compiled, instead of a cache of their own.
    # All at the same XLA flags, so the bits compare.
    env = device_env(1)
    overrides = {
        # Batches drawn on the devices: no start imports TensorFlow (~5 s of CPU each, and the
        # test makes five). A kill ends every thread at once, whatever the pipeline; what is
        # tested is the checkpoints and the restart. tf.data's resume in a new process is
        # preemption_test's `[step_2, tf.data]` case.
        "input.pipeline": "device",
        "num_train_steps": STEPS,
        "checkpoint_every_steps": EVERY,
        "eval.every_steps": 0,
        "eval.protocols": "pop100",  # the test metrics only need to be compared
    }
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    crash_resume.run_reference(reference, data_dir, overrides, env, tmp_path / "reference.log")

    kills = crash_resume.plan_kills(3, STEPS, EVERY, seed=0, kinds=("step", "save"))
    assert {k.kind for k in kills} == {"step", "save"}
    command = crash_resume.train_command(crashed, data_dir, overrides)
    run = crash_resume.crash_and_resume(
        crashed, command, kills, env, tmp_path / "logs", timeout=240
    )

    starts = run.starts
    assert [s.killed for s in starts] == [True] * 3 + [False]
    assert [s.returncode for s in starts] == [-signal.SIGKILL] * 3 + [0]
    # A save was cut short: its partial directory was on disk when the next start began...
    assert any(s.kill.kind == "save" and s.partial for s in starts[:-1]), starts
    # ... and was cleared by the restart, which then finished.
    assert starts[-1].partial == []
    # The restarts went on from checkpoints rather than from scratch.
    resumed = [s.resumed_from for s in starts[1:] if s.resumed_from is not None]
    assert resumed and resumed == sorted(resumed)
    assert all(
        f"Resuming from checkpoint at step {s.resumed_from}" in s.log.read_text()
        for s in starts
        if s.resumed_from is not None
    )

    # Every checkpoint read after a kill, and the final state, equal the reference's bits.
    verdicts = crash_resume.judge_restarts(run, reference)
    assert all(exact for _, exact in verdicts), verdicts
    final, final_step = checkpointing.restore_params(crashed, "latest")
    expected, expected_step = checkpointing.restore_params(reference, "latest")
    assert final_step == expected_step == STEPS
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    results = json.loads((crashed / workdir_lib.RESULTS_FILE).read_text())
    expected = json.loads((reference / workdir_lib.RESULTS_FILE).read_text())
    # Same metrics and checkpoint step; the config hashes differ (the reference keeps every
    # checkpoint).
    assert results.pop("run")["checkpoint_step"] == expected.pop("run")["checkpoint_step"]
    assert results == expected
