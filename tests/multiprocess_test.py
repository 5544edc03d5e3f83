"""A real multi-process job: two JAX processes on localhost (gloo) train as one.

Each process feeds only its own slice of every global batch, so two processes of two devices
must train the same model as one process: conftest's `tiny_finished_run`, the same config
trained in the test process on its 8 devices (the same global batches; only the order of the
sums over devices differs, hence allclose).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import free_port, xla_flags

from bert4rec_jax import checkpointing
from bert4rec_jax import workdir as workdir_lib

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(command, devices_per_process, **env):
    env = dict(
        os.environ,
        XLA_FLAGS=xla_flags(devices_per_process),
        # The launcher runs `python`: this interpreter's, whether or not its venv is active.
        PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        **env,
    )
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def test_two_processes_train_like_one_process(tiny_finished_run, tmp_path):
    reference = tiny_finished_run
    config = reference.config
    multi = tmp_path / "multi"
    # Its config through the command line. The data directory is the reference's, prepared
    # and only read: process 1 would otherwise wait for process 0 to prepare it at a barrier
    # whose gloo set-up times out after 30 s, which preparing can take on a loaded CPU.
    flags = [
        "--config=configs/tiny.py",
        f"--config.data_dir={config.data_dir}",
        f"--config.batch_size={config.batch_size}",
        f"--config.num_train_steps={config.num_train_steps}",
        f"--config.warmup_steps={config.warmup_steps}",
        f"--config.checkpoint_every_steps={config.checkpoint_every_steps}",
        f"--config.eval.every_steps={config.eval.every_steps}",
    ]
    out = _run(
        ["bash", "launch/local_multiprocess.sh", "2", f"--workdir={multi}", *flags],
        devices_per_process=2,
        PORT=str(free_port()),
    )
    assert "JAX process 1/2, 2 local / 4 global devices" in out.stderr
    assert ", tf.data input, " in out.stderr + out.stdout  # the default pipeline, per process

    multi_params, multi_step = checkpointing.restore_params(multi, "latest")
    single_params, single_step = checkpointing.restore_params(reference.workdir, "latest")
    assert multi_step == single_step == config.num_train_steps
    for a, b in zip(jax.tree.leaves(multi_params), jax.tree.leaves(single_params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    multi_results = json.loads((multi / workdir_lib.RESULTS_FILE).read_text())
    single_results = json.loads((reference.workdir / workdir_lib.RESULTS_FILE).read_text())
    # Both stamped alike: the same config (paths aside) and checkpoint step.
    assert multi_results.pop("run") == single_results.pop("run")
    assert multi_results.keys() == single_results.keys()
    for key, value in single_results.items():
        np.testing.assert_allclose(multi_results[key], value, atol=1e-6, err_msg=key)
