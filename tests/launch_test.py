"""Launchers: the TPU pod script's commands (dry run, with its remote command run by a local bash),
and multi-process jobs formed from SLURM's environment, through JAX and through launch/slurm.sbatch.

Neither gcloud nor SLURM exists here: gcloud is replaced by a program that fails loudly (a dry run
must not call it), and srun by a script that starts the tasks on this machine with the variables
srun gives them, so that jax.distributed.initialize() meets the environment it reads on a cluster.
"""

import json
import os
import random
import socket
import subprocess
import sys
import textwrap

import pytest

from bert4rec_jax import checkpointing, train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# JAX's SLURM coordinator port: 61440 + SLURM_JOB_ID % 4096 (jax/_src/clusters/slurm_cluster.py).
SLURM_PORT_BASE = 65535 - 2**12 + 1

# A training flag that a careless `ssh --command="... $*"` would split, unquote or expand.
AWKWARD_FLAG = '--config.note=it\'s "two words"; $HOME `id` \\ end'
TRAIN_FLAGS = ["--config=configs/steam.py", "--workdir=/mnt/shared/steam", AWKWARD_FLAG]


def _executable(path, body):
    path.write_text(textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


@pytest.fixture
def no_gcloud(tmp_path):
    """A PATH whose `gcloud` records that it was called and fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    called = tmp_path / "gcloud_was_called"
    _executable(
        bin_dir / "gcloud",
        f"""
        #!/usr/bin/env bash
        echo "$@" >> {called}
        echo "fake gcloud: a dry run must not call gcloud" >&2
        exit 97
        """,
    )
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"), called


def _tpu_pod(env, *args):
    return subprocess.run(
        ["bash", "launch/tpu_pod.sh", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _words(line):
    """The words bash makes of a printed command line (as if it were pasted into a shell)."""
    out = subprocess.run(
        ["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, text=True, timeout=10
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\0")[:-1]


def _gcloud_commands(stdout):
    """The printed gcloud commands, as argument lists."""
    lines = [line[2:] for line in stdout.splitlines() if line.startswith("+ gcloud ")]
    return [_words(line) for line in lines]


def _option(words, name):
    values = [w.split("=", 1)[1] for w in words if w.startswith(f"--{name}=")]
    assert len(values) == 1, (name, words)
    return values[0]


def test_tpu_pod_dry_run_prints_each_step_and_runs_nothing(no_gcloud, tmp_path):
    env, called = no_gcloud
    out = _tpu_pod(
        env,
        "--name=pod-1",
        "--zone=us-east5-a",
        "--project=my-project",
        "--accelerator=v5p-32",
        "--create",
        "--delete",
        "--dry_run",
        "--",
        *TRAIN_FLAGS,
    )
    assert out.returncode == 0, out.stderr
    assert not called.exists(), called.read_text()
    create, scp, install, train, delete = _gcloud_commands(out.stdout)
    where = ["--zone=us-east5-a", "--project=my-project"]
    assert create == [
        *"gcloud compute tpus tpu-vm create pod-1".split(),
        *where,
        "--accelerator-type=v5p-32",
        "--version=v2-alpha-tpuv5",
    ]
    assert scp[:5] == "gcloud compute tpus tpu-vm scp".split()
    assert scp[6] == "pod-1:bert4rec_jax.tgz" and "--worker=all" in scp
    # The archive copied is made (printed only) from this checkout's files.
    assert f"cd {REPO} && git ls-files" in out.stdout
    assert not os.path.exists(scp[5])
    for ssh in install, train:
        assert ssh[:8] == [*"gcloud compute tpus tpu-vm ssh pod-1".split(), *where]
        assert ssh[8] == "--worker=all"
    assert 'pip install -q -e ".[tpu]"' in _option(install, "command")
    assert delete == [*"gcloud compute tpus tpu-vm delete pod-1".split(), *where, "--quiet"]

    # Each worker's shell gets the training command with the flags intact: run the remote command
    # with a local bash, as worker 0 and as worker 1, where `python` prints the arguments it got.
    remote = _option(train, "command")
    home = tmp_path / "home"
    (home / "bert4rec_jax").mkdir(parents=True)
    (home / "bert4rec_venv" / "bin").mkdir(parents=True)
    _executable(
        home / "bert4rec_venv" / "bin" / "python",
        """
        #!/usr/bin/env python3
        import json, sys
        print(json.dumps(sys.argv[1:]))
        """,
    )
    expected = ["-m", "bert4rec_jax.train", "--distributed", *TRAIN_FLAGS]
    for worker in ("0", "1"):
        _executable(tmp_path / "bin" / "curl", f"#!/bin/sh\necho {worker}\n")
        ran = subprocess.run(
            ["bash", "-c", remote],
            env=dict(env, HOME=str(home)),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ran.returncode == 0, ran.stderr
        log = (home / "bert4rec_train.log").read_text()
        assert json.loads(log) == expected
        # Worker 0 streams its output back; the others only keep their log.
        assert ran.stdout == (log if worker == "0" else "")


def test_tpu_pod_on_an_existing_slice_only_trains(no_gcloud):
    env, called = no_gcloud
    out = _tpu_pod(
        env, "--name=pod-1", "--zone=z", "--skip_install", "--dry_run", "--", *TRAIN_FLAGS
    )
    assert out.returncode == 0, out.stderr
    assert not called.exists()
    (train,) = _gcloud_commands(out.stdout)
    assert train[:5] == "gcloud compute tpus tpu-vm ssh".split()
    assert "--project" not in " ".join(train)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone=z", "--", "--config=c"], "--name=NAME"),
        (["--name=n", "--", "--config=c"], "--zone=ZONE"),
        (["--name=n", "--zone=z"], "no training flags"),
        (["--name=n", "--zone=z", "--create", "--", "--config=c"], "--accelerator"),
        (["--name=n", "--zone=z", "--create", "--accelerator=v9-8", "--", "-c"], "--version"),
        (["--name=n", "--zone=z", "--config=c"], "unknown option '--config=c'"),
    ],
)
def test_tpu_pod_bad_usage_is_named(no_gcloud, args, message):
    env, called = no_gcloud
    out = _tpu_pod(env, *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert not called.exists()


def test_tpu_pod_help(no_gcloud):
    out = _tpu_pod(no_gcloud[0], "--help")
    assert out.returncode == 0
    assert out.stdout.startswith("usage: launch/tpu_pod.sh --name=NAME --zone=ZONE")


def _slurm_env(num_tasks):
    """The job-level variables sbatch sets, with a job id whose coordinator port is free."""
    offsets = list(range(2**12))
    random.shuffle(offsets)
    for offset in offsets:
        with socket.socket() as s:
            try:
                s.bind(("", SLURM_PORT_BASE + offset))
            except OSError:
                continue
        break
    return {
        "SLURM_JOB_ID": str(2**12 * 1000 + offset),
        "SLURM_NTASKS": str(num_tasks),
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_SUBMIT_DIR": REPO,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_PLATFORMS": "cpu",
    }


def _task_env(job_env, task):
    """What srun adds for one task on a one-node allocation."""
    return dict(
        os.environ,
        **job_env,
        SLURM_PROCID=str(task),
        SLURM_LOCALID=str(task),
        SLURM_STEP_NODELIST="localhost",
        SLURM_STEP_NUM_NODES="1",
    )


# jax.distributed.initialize() with no arguments, as train.py calls it, then a computation that
# needs every process.
ALLGATHER = """
import json
import jax
import numpy as np
from jax.experimental import multihost_utils

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize()
gathered = multihost_utils.process_allgather(np.int32(10 * jax.process_index() + 7))
print(json.dumps({"index": jax.process_index(), "count": jax.process_count(),
                  "devices": jax.device_count(), "gathered": gathered.tolist()}))
jax.distributed.shutdown()
"""


def test_slurm_variables_form_one_jax_job():
    job = _slurm_env(2)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ALLGATHER],
            env=_task_env(job, task),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for task in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=120)
            assert p.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [o["index"] for o in outputs] == [0, 1]
    for o in outputs:
        assert o["count"] == 2 and o["devices"] == 2
        assert o["gathered"] == [7, 17]


@pytest.mark.slow
def test_slurm_sbatch_trains_as_one_job(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(
        bin_dir / "srun",
        """
        #!/usr/bin/env bash
        # Stands in for srun on one node: SLURM_NTASKS tasks of the command, with srun's variables.
        while [[ "$1" == -* ]]; do shift; done  # srun's own options
        pids=()
        for ((i = 0; i < SLURM_NTASKS; i++)); do
          SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NODELIST=localhost SLURM_STEP_NUM_NODES=1 \\
            "$@" &
          pids+=($!)
        done
        status=0
        for pid in "${pids[@]}"; do wait "$pid" || status=1; done
        exit $status
        """,
    )
    workdir = tmp_path / "work"
    env = dict(os.environ, **_slurm_env(2), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"  # its `python`
    out = subprocess.run(
        [
            "bash",
            "launch/slurm.sbatch",
            "--config=configs/tiny.py",
            f"--workdir={workdir}",
            f"--config.data_dir={tmp_path / 'data'}",
            "--config.num_train_steps=4",
            "--config.warmup_steps=1",
            "--config.eval.every_steps=0",
            "--config.eval.protocols=pop100",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    for i in range(2):
        assert f"JAX process {i}/2, 1 local / 2 global devices" in out.stderr
    _, step = checkpointing.restore_params(workdir, "latest")
    assert step == 4
    assert json.loads((workdir / train_lib.RESULTS_FILE).read_text())["step"] == 4
