"""Launchers: the TPU pod launcher against a fake gcloud, and multi-process jobs formed from
SLURM's environment, through JAX and through launch/slurm.sbatch.

Neither gcloud nor SLURM exists here. For dry runs gcloud is a program that fails loudly (a dry run
must not call it); otherwise it is tests/fake_gcloud.py, whose slices' "workers" are local
processes that really install and train, and whose slices can be preempted, refused or queued.
srun is a script that starts the tasks on this machine with the variables srun gives them, so
that jax.distributed.initialize() meets the environment it reads on a cluster.
"""

import json
import os
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from helpers import free_port, xla_flags

from benchmarks import faults as crash_resume
from bert4rec_jax import checkpointing
from bert4rec_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_GCLOUD = pathlib.Path(__file__).with_name("fake_gcloud.py")
# JAX's SLURM coordinator port: 61440 + SLURM_JOB_ID % 4096 (jax/_src/clusters/slurm_cluster.py).
SLURM_PORT_BASE = 65535 - 2**12 + 1
TIMESTAMP = r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\] tpu_pod: "

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


def _tpu_pod(env, *args, timeout=60):
    return subprocess.run(
        [sys.executable, "launch/tpu_pod.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
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
    # A command spans several lines where a quoted argument does: join them back first.
    text = re.sub(r"\n(?![+#] )", "\x00", stdout)
    lines = [line[2:].replace("\x00", "\n") for line in text.splitlines()]
    return [_words(line) for line in lines if line.startswith("gcloud ")]


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
    assert delete == [
        *"gcloud compute tpus tpu-vm delete pod-1".split(),
        *where,
        "--quiet",
    ]

    # Each worker's shell gets the training command with the flags intact: run the remote command
    # with a local bash, as worker 0 and as worker 1, where `python` prints the arguments it got
    # and the compilation cache it was given.
    remote = _option(train, "command")
    home = tmp_path / "home"
    (home / "bert4rec_jax").mkdir(parents=True)
    (home / "bert4rec_venv" / "bin").mkdir(parents=True)
    _executable(
        home / "bert4rec_venv" / "bin" / "python",
        """
        #!/usr/bin/env python3
        import json, os, sys
        print(json.dumps([os.environ.get("JAX_COMPILATION_CACHE_DIR"), *sys.argv[1:]]))
        """,
    )
    cache = "/mnt/shared/steam/compilation_cache"  # on by default, in the workdir
    expected = [cache, "-m", "bert4rec_jax.train", "--distributed", *TRAIN_FLAGS]
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
        assert not (home / "bert4rec_train.pid").exists()  # gone with the training


def test_tpu_pod_on_an_existing_slice_only_trains(no_gcloud):
    env, called = no_gcloud
    out = _tpu_pod(
        env,
        "--name=pod-1",
        "--zone=z",
        "--skip_install",
        "--compilation_cache=",
        "--dry_run",
        "--",
        *TRAIN_FLAGS,
    )
    assert out.returncode == 0, out.stderr
    assert not called.exists()
    (train,) = _gcloud_commands(out.stdout)
    assert train[:5] == "gcloud compute tpus tpu-vm ssh".split()
    assert "--project" not in " ".join(train)
    assert "JAX_COMPILATION_CACHE_DIR" not in _option(train, "command")


CAPACITY = [
    "--network=net-1",
    "--subnetwork=sub-1",
    "--service_account=trainer@my-project.iam.gserviceaccount.com",
    "--internal_ips",
    "--labels=team=recsys,run=steam",
    "--create_flag=--tags=tpu,train",
    "--create_flag=--description=a run with spaces",
]
CAPACITY_AS_GCLOUD = [
    "--network=net-1",
    "--subnetwork=sub-1",
    "--service-account=trainer@my-project.iam.gserviceaccount.com",
    "--internal-ips",
    "--labels=team=recsys,run=steam",
    "--tags=tpu,train",
    "--description=a run with spaces",
]


@pytest.mark.parametrize(
    "tier, queued",
    [("--spot", False), ("--preemptible", False), ("--reserved", False)]
    + [("--spot", True), ("--reserved", True)],
)
def test_tpu_pod_create_flags_are_passed_as_written(no_gcloud, tier, queued):
    env, called = no_gcloud
    out = _tpu_pod(
        env,
        "--name=pod-1",
        "--zone=us-east5-a",
        "--accelerator=v5p-64",
        "--create",
        tier,
        *CAPACITY,
        *(["--queued"] if queued else []),
        "--dry_run",
        "--",
        *TRAIN_FLAGS,
    )
    assert out.returncode == 0, out.stderr
    assert not called.exists()
    create = _gcloud_commands(out.stdout)[0]
    if queued:
        assert create == [
            *"gcloud compute tpus queued-resources create pod-1 --zone=us-east5-a".split(),
            "--node-id=pod-1",
            "--accelerator-type=v5p-64",
            "--runtime-version=v2-alpha-tpuv5",
            tier,
            *CAPACITY_AS_GCLOUD,
        ]
        # Then it waits, reading the request's state, until it is ACTIVE.
        assert _gcloud_commands(out.stdout)[1] == [
            *"gcloud compute tpus queued-resources describe pod-1 --zone=us-east5-a".split(),
            "--format=json",
        ]
    else:
        assert create == [
            *"gcloud compute tpus tpu-vm create pod-1 --zone=us-east5-a".split(),
            "--accelerator-type=v5p-64",
            "--version=v2-alpha-tpuv5",
            tier,
            *CAPACITY_AS_GCLOUD,
        ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone=z", "--", "--config=c"], "--name=NAME"),
        (["--name=n", "--", "--config=c"], "--zone=ZONE"),
        (["--name=n", "--zone=z"], "no training flags"),
        (["--name=n", "--zone=z", "--create", "--", "--config=c"], "--accelerator"),
        (["--name=n", "--zone=z", "--create", "--accelerator=v9-8", "--", "-c"], "--version"),
        (["--name=n", "--zone=z", "--config=c"], "unknown option '--config=c'"),
        (["--name=n", "--zone=z", "--spot", "--", "-c"], "need --create or --until_done"),
        (
            ["--name=n", "--zone=z", "--create", "--accelerator=v5p-8", "--spot", "--reserved"]
            + ["--", "-c"],
            "not allowed with argument --spot",
        ),
        (
            ["--name=n", "--zone=z", "--create", "--accelerator=v5p-8", "--queued"]
            + ["--preemptible", "--", "-c"],
            "--preemptible is not offered by queued resources",
        ),
        (
            ["--name=n", "--zone=z", "--create", "--accelerator=v5p-8", "--create_flag=tags=a"]
            + ["--", "-c"],
            "--create_flag=tags=a",
        ),
        (
            ["--name=n", "--zone=z", "--until_done", "--accelerator=v5p-8", "--"]
            + ["--config=c", "--workdir=runs/a"],
            "absolute or gs:// --workdir",
        ),
        (
            ["--name=n", "--zone=z", "--until_done", "--accelerator=v5p-8", "--max_retries=-1"]
            + ["--", "--workdir=/w"],
            "--max_retries=-1",
        ),
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
    assert out.stdout.startswith("usage: launch/tpu_pod.py --name=NAME --zone=ZONE")


# ---- against a fake gcloud -------------------------------------------------------------------


class Cloud:
    """tests/fake_gcloud.py on PATH, its state directory, and the launcher run against it."""

    def __init__(self, tmp_path):
        self.root = tmp_path / "cloud"
        self.root.mkdir()
        bin_dir = tmp_path / "cloud_bin"
        bin_dir.mkdir()
        _executable(bin_dir / "gcloud", f'#!/bin/sh\nexec {sys.executable} {FAKE_GCLOUD} "$@"\n')
        # The workers' metadata server answers their number; uv makes a "virtual environment"
        # whose python is this one and whose pip checks that it runs in the unpacked checkout.
        _executable(bin_dir / "curl", '#!/bin/sh\necho "$FAKE_WORKER"\n')
        _executable(
            bin_dir / "uv",
            f"""
            #!/bin/sh
            for a; do venv=$a; done
            mkdir -p "$venv/bin"
            printf '#!/bin/sh\\nexec {sys.executable} "$@"\\n' > "$venv/bin/python"
            printf '#!/bin/sh\\ntest -f setup.cfg\\n' > "$venv/bin/pip"
            chmod +x "$venv/bin/python" "$venv/bin/pip"
            """,
        )
        self.env = dict(
            os.environ,
            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            FAKE_GCLOUD_DIR=str(self.root),
            XLA_FLAGS=xla_flags(1),
            JAX_PLATFORMS="cpu",
        )

    def script(self, **misfortunes):
        (self.root / "script.json").write_text(json.dumps(misfortunes))

    def calls(self, verb=None):
        lines = (self.root / "calls.jsonl").read_text().splitlines()
        calls = [json.loads(line) for line in lines]
        return [c for c in calls if verb is None or c[3] == verb]

    def trainings(self):
        return [c for c in self.calls("ssh") if "bert4rec_jax.train --distributed" in c[-1]]

    def state(self):
        return json.loads((self.root / "state.json").read_text())

    def run(self, *args, timeout=900):
        return _tpu_pod(self.env, *args, timeout=timeout)

    def start(self, *args):
        return subprocess.Popen(
            [sys.executable, "launch/tpu_pod.py", *args],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A shell that starts pytest in the background (`pytest &`) has SIGINT ignored, and a
            # Python started with SIGINT ignored keeps ignoring it: Ctrl-C as a terminal sends it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


@pytest.fixture
def cloud(tmp_path):
    return Cloud(tmp_path)


SLICE = ["--name=pod-1", "--zone=us-east5-a", "--accelerator=v5p-16"]
FAST = ["--retry_wait=0", "--poll_interval=0.1"]


def tiny_flags(data_dir, workdir, *extra):
    """A short real training run that checkpoints on the way (also the reference's flags).

    Batches drawn on the devices: these processes then import no TensorFlow (~5 s of CPU each,
    and the launchers start dozens). What is tested here is the launchers; the tf.data pipeline
    runs in processes of multiprocess_test (two processes), preemption_test and cli_test."""
    return [
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        "--config.input.pipeline=device",
        "--config.num_train_steps=60",
        "--config.checkpoint_every_steps=10",
        "--config.eval.every_steps=0",
        "--config.eval.protocols=pop100",
        *extra,
    ]


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """One uninterrupted run of two processes of one device each (like two workers, or two
    SLURM tasks), shared by the tests that compare their final parameters with it."""
    root = tmp_path_factory.mktemp("reference")
    data, workdir = root / "data", root / "work"
    # Prepared here: process 1 waits for process 0 at a barrier whose gloo set-up times out
    # after 30 s, which preparing the corpus in process 0 can take on a loaded CPU.
    crash_resume.prepare_data(data)
    env = dict(
        os.environ,
        XLA_FLAGS=xla_flags(1),
        JAX_PLATFORMS="cpu",
        PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        PORT=str(free_port()),  # not the launcher's random pick: tests run side by side
    )
    out = subprocess.run(
        ["bash", "launch/local_multiprocess.sh", "2", *tiny_flags(data, workdir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return data, workdir


def assert_same_final_params(workdir_a, workdir_b):
    a, step_a = checkpointing.restore_params(workdir_a, "latest")
    b, step_b = checkpointing.restore_params(workdir_b, "latest")
    assert step_a == step_b == 60
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_timestamped(stderr):
    lines = [line for line in stderr.splitlines() if "tpu_pod: " in line]
    assert lines and all(re.match(TIMESTAMP, line) for line in lines), lines


@pytest.mark.slow
def test_until_done_survives_refusals_a_queue_and_a_preemption(cloud, reference, tmp_path):
    data, reference_workdir = reference
    workdir = tmp_path / "work"
    # Two workers; two creates refused; each request waits two looks in the queue; the first
    # training loses its slice once it has saved a checkpoint.
    cloud.script(
        workers=2,
        fail_creates=2,
        queued_waiting=2,
        preempt_trainings=[1],
        preempt_after_checkpoint_in=str(workdir),
    )
    out = cloud.run(
        *SLICE,
        "--spot",
        "--queued",
        *CAPACITY,
        "--until_done",
        "--delete",
        *FAST,
        "--",
        *tiny_flags(data, workdir),
    )
    assert out.returncode == 0, out.stderr[-6000:]
    assert_timestamped(out.stderr)
    creates = cloud.calls("create")
    assert len(creates) == 4  # refused, refused, the first slice, the one after the preemption
    for create in creates:
        assert create[5:] == [
            "--zone=us-east5-a",
            "--node-id=pod-1",
            "--accelerator-type=v5p-16",
            "--runtime-version=v2-alpha-tpuv5",
            "--spot",
            *CAPACITY_AS_GCLOUD,
        ]
    assert "pod-1 is PREEMPTED: deleting it to create it again" in out.stderr
    assert "retry 3 of 10" in out.stderr and "retry 4" not in out.stderr
    assert len(cloud.trainings()) == 2
    # The second training resumed from the first one's last checkpoint (worker 0's output
    # streams through), and the launcher stopped at the results, deleting the slice.
    resumed = int(re.search(r"Resuming from checkpoint at step (\d+)", out.stdout).group(1))
    assert 10 <= resumed < 60
    assert f"the test results are in {workdir}: done" in out.stderr
    assert (workdir / workdir_lib.RESULTS_FILE).exists()
    assert cloud.state()["nodes"] == {} and cloud.state()["queued"] == {}
    # Compiled programs went to the workdir's cache, for the rerun to find.
    assert any((workdir / "compilation_cache").iterdir())
    assert_same_final_params(reference_workdir, workdir)


@pytest.mark.slow
def test_until_done_does_not_retry_a_training_error(cloud, tmp_path):
    cloud.script(workers=1)
    out = cloud.run(
        *SLICE,
        "--until_done",
        *FAST,
        "--",
        *tiny_flags(tmp_path / "data", tmp_path / "work", "--config.num_train_steps=0"),
    )
    assert out.returncode == 1
    assert "num_train_steps=0" in out.stdout  # the refusal, from worker 0
    assert "a training error, not retried" in out.stderr
    assert len(cloud.calls("create")) == 1 and len(cloud.trainings()) == 1
    assert cloud.state()["nodes"]["pod-1"]["state"] == "READY"  # no --delete: kept


@pytest.mark.parametrize("misfortune", ["every create is refused", "every slice is preempted"])
def test_until_done_gives_up_after_max_retries(cloud, tmp_path, misfortune):
    if misfortune == "every create is refused":
        cloud.script(fail_creates=100)
    else:
        cloud.script(preempt_trainings=list(range(1, 100)))
    out = cloud.run(
        *SLICE,
        "--until_done",
        "--max_retries=2",
        "--delete",
        *FAST,
        "--",
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'work'}",
        timeout=120,
    )
    assert out.returncode == 1
    assert "no retries left (--max_retries=2), stopping" in out.stderr
    assert_timestamped(out.stderr)
    assert len(cloud.calls("create")) == 3  # the first try and two retries
    preempted = misfortune == "every slice is preempted"
    assert len(cloud.trainings()) == (3 if preempted else 0)
    assert cloud.state()["nodes"] == {}


def test_queued_request_not_filled_in_time_is_withdrawn(cloud, tmp_path):
    cloud.script(queued_waiting=-1)  # WAITING_FOR_RESOURCES for ever
    out = cloud.run(
        *SLICE,
        "--create",
        "--queued",
        "--queued_timeout=1",
        *FAST,
        "--",
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'work'}",
        timeout=120,
    )
    assert out.returncode == 1
    assert "pod-1 is WAITING_FOR_RESOURCES" in out.stderr
    assert "not ready after 1 s (--queued_timeout)" in out.stderr
    assert cloud.state()["queued"] == {}  # withdrawn: a late slice would be billed for nothing
    assert cloud.calls("ssh") == [] and cloud.calls("scp") == []


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_deletes_the_slice(cloud, tmp_path):
    workdir = tmp_path / "work"
    cloud.script(workers=1)
    long_run = tiny_flags(tmp_path / "data", workdir, "--config.num_train_steps=100000")
    # The session's compilation cache, not a cold one in the workdir: this test is about the
    # stop, and test_until_done_... checks the workdir's cache.
    cache = f"--compilation_cache={os.environ['JAX_COMPILATION_CACHE_DIR']}"
    proc = cloud.start(*SLICE, "--until_done", "--delete", cache, *FAST, "--", *long_run)
    try:
        deadline = time.monotonic() + 600
        # Any checkpoint from step 10 on: with a warm compilation cache the run can be past step
        # 40 before a poll, and keep_checkpoints has rotated step 10's away by then.
        while not any(
            p.name.isdigit() and int(p.name) >= 10 for p in (workdir / "checkpoints").glob("*")
        ):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-4000:]
    assert "interrupted" in stderr and "asking the training on pod-1 to save" in stderr
    # The workers' training was asked to stop (it saved a checkpoint past step 10), then the
    # slice was deleted.
    stop, delete = cloud.calls()[-3], cloud.calls()[-1]
    assert stop[3] == "ssh" and "kill -TERM" in stop[-1]
    assert delete[3] == "delete"
    assert cloud.state()["nodes"] == {}
    assert checkpointing.Checkpointer(workdir, keep=3).latest_step() > 10
    assert not (workdir / workdir_lib.RESULTS_FILE).exists()
    # ...and it stopped by itself at a step, not by the slice's deletion after the launcher's
    # grace period (the periodic checkpoints alone would pass the checks above).
    log = (cloud.root / "nodes" / "pod-1" / "worker0" / "bert4rec_train.log").read_text()
    assert re.search(r"Stopping at step \d+ on SIGTERM", log), log[-4000:]


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
        "XLA_FLAGS": xla_flags(1),
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


class Slurm:
    """sbatch, scontrol and srun stand-ins: sbatch runs the batch script here and again each time
    it was requeued (with SLURM_RESTART_COUNT, as SLURM would); srun starts SLURM_NTASKS tasks
    of its command with srun's variables, and for the first $FAKE_TIME_LIMITS runs plays the
    time limit: SIGTERM to every task once the workdir holds a checkpoint."""

    def __init__(self, tmp_path):
        self.root = tmp_path / "slurm"
        self.root.mkdir()
        bin_dir = tmp_path / "slurm_bin"
        bin_dir.mkdir()
        _executable(
            bin_dir / "sbatch",
            """
            #!/usr/bin/env bash
            script=$1; shift
            restarts=0
            while true; do
              rm -f "$FAKE_SLURM_DIR/requeued"
              if ((restarts > 0)); then export SLURM_RESTART_COUNT=$restarts; fi
              status=0; bash "$script" "$@" || status=$?
              echo "$status" >> "$FAKE_SLURM_DIR/runs"
              [[ -e "$FAKE_SLURM_DIR/requeued" ]] || exit $status
              restarts=$((restarts + 1))
            done
            """,
        )
        _executable(
            bin_dir / "scontrol",
            """
            #!/usr/bin/env bash
            echo "$@" >> "$FAKE_SLURM_DIR/scontrol_calls"
            [[ "$1 $2" == "requeue $SLURM_JOB_ID" ]] && touch "$FAKE_SLURM_DIR/requeued"
            """,
        )
        _executable(
            bin_dir / "srun",
            """
            #!/usr/bin/env bash
            while [[ "$1" == -* ]]; do shift; done  # srun's own options
            echo "$@" >> "$FAKE_SLURM_DIR/sruns"
            if [[ -n "${FAKE_SRUN_STATUS:-}" ]]; then exit "$FAKE_SRUN_STATUS"; fi  # no training
            pids=()
            for ((i = 0; i < SLURM_NTASKS; i++)); do
              SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NODELIST=localhost \\
                SLURM_STEP_NUM_NODES=1 "$@" &
              pids+=($!)
            done
            if (($(wc -l < "$FAKE_SLURM_DIR/sruns") <= ${FAKE_TIME_LIMITS:-0})); then
              until ls "$FAKE_WORKDIR/checkpoints" 2> /dev/null | grep -qx '[0-9]*'; do
                sleep 0.1
              done
              kill -TERM "${pids[@]}"
            fi
            status=0
            for pid in "${pids[@]}"; do wait "$pid" || status=1; done
            exit $status
            """,
        )
        self.env = dict(
            os.environ,
            **_slurm_env(2),
            FAKE_SLURM_DIR=str(self.root),
            # `python` is this one, as in a submitting shell with the environment active.
            PATH=os.pathsep.join(
                [str(bin_dir), os.path.dirname(sys.executable), os.environ["PATH"]]
            ),
        )

    def sbatch(self, *flags, timeout=900, **env):
        return subprocess.run(
            ["sbatch", "launch/slurm.sbatch", *flags],
            cwd=REPO,
            env=dict(self.env, **env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def lines(self, name):
        path = self.root / name
        return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_slurm_job_requeues_itself_after_its_time_limit_and_finishes(tmp_path, reference):
    data, reference_workdir = reference
    workdir = tmp_path / "work"
    slurm = Slurm(tmp_path)
    out = slurm.sbatch(*tiny_flags(data, workdir), FAKE_TIME_LIMITS="1", FAKE_WORKDIR=str(workdir))
    assert out.returncode == 0, out.stderr[-4000:]
    for i in range(2):
        assert f"JAX process {i}/2, 1 local / 2 global devices" in out.stderr
    assert "stopped before the end: requeueing (restart 1 of at most 5)" in out.stderr
    assert slurm.lines("scontrol_calls") == [f"requeue {slurm.env['SLURM_JOB_ID']}"]
    assert slurm.lines("runs") == ["0", "0"]  # stopped and requeued, then finished
    resumed = int(re.search(r"Resuming from checkpoint at step (\d+)", out.stderr).group(1))
    assert 10 <= resumed < 60
    assert json.loads((workdir / workdir_lib.RESULTS_FILE).read_text())["step"] == 60
    assert_same_final_params(reference_workdir, workdir)


@pytest.mark.parametrize(
    "case, srun_status, runs, requeues, status, message",
    [
        # Every run stops before the end (a time limit each time): requeued twice, then not.
        ("stops every time", "0", 3, 2, 1, "requeued 2 times already (BERT4REC_MAX_REQUEUES=2)"),
        ("training error", "1", 1, 0, 1, "training failed (status 1): not requeued"),
        ("already done", "0", 0, 0, 0, "the test results are in"),
    ],
)
def test_slurm_requeue_is_bounded_and_only_for_stops(
    tmp_path, case, srun_status, runs, requeues, status, message
):
    workdir = tmp_path / "work"
    if case == "already done":
        workdir.mkdir()
        (workdir / workdir_lib.RESULTS_FILE).write_text("{}")
    slurm = Slurm(tmp_path)
    out = slurm.sbatch(
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        timeout=120,
        FAKE_SRUN_STATUS=srun_status,
        BERT4REC_MAX_REQUEUES="2",
    )
    assert out.returncode == status, out.stderr
    assert message in out.stderr
    assert len(slurm.lines("sruns")) == runs
    assert len(slurm.lines("scontrol_calls")) == requeues
    assert re.search(r"slurm.sbatch: \[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\] ", out.stderr)


def test_slurm_job_requeued_past_the_bound_by_slurm_stops_at_once(tmp_path):
    # A preempted job is requeued by SLURM itself; past the bound the script refuses to train.
    slurm = Slurm(tmp_path)
    out = slurm.sbatch(
        "--config=configs/tiny.py",
        f"--workdir={tmp_path / 'work'}",
        timeout=120,
        FAKE_SRUN_STATUS="0",
        BERT4REC_MAX_REQUEUES="2",
        SLURM_RESTART_COUNT="3",
    )
    assert out.returncode == 1
    assert "requeued 3 times, more than BERT4REC_MAX_REQUEUES=2: stopping" in out.stderr
    assert slurm.lines("sruns") == []


def test_the_docs_show_the_dry_run_of_a_spot_queued_launch(no_gcloud):
    """docs/clusters.md's dry-run listing is what the launcher prints today (but for the times,
    the checkout's path and the temporary directory)."""
    readme = pathlib.Path(REPO, "docs", "clusters.md").read_text()
    section = readme[readme.index("## Train on a TPU pod") : readme.index("## Train on a GPU")]
    command = re.search(r"```bash\n(launch/tpu_pod.py [^`]*--spot --queued[^`]*)```", section)
    words = _words(command.group(1).replace("\\\n", " ").split("2>&1")[0])
    listing = re.search(r"```\n(\[[^`]*)```", section).group(1)
    out = _tpu_pod(no_gcloud[0], "--dry_run", *words[1:])
    assert out.returncode == 0, out.stderr

    def normal(text):
        text = re.sub(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\]", "[TIME]", text)
        text = re.sub(r"/tmp/tmp\w+/", "/tmp/TMP/", text)
        return text.replace(f"cd {REPO} ", "cd ~/bert4rec_jax ")

    # stdout and stderr as a terminal shows them: the log lines sit between the commands.
    printed = sorted(normal(out.stdout + out.stderr).splitlines())
    assert printed == sorted(normal(listing).splitlines())
