"""A stand-in for the `gcloud compute tpus` commands launch/tpu_pod.py uses, for its tests.

A small state machine kept in $FAKE_GCLOUD_DIR: slices (nodes) and queued resources are created,
described, deleted; `scp` copies into each worker's home directory, and `ssh` runs the command
with bash as one local process per worker (HOME = that worker's directory), so that the
"workers" of a slice really install and train. Each worker's environment carries SLURM's
variables, which jax.distributed.initialize() reads to join the workers into one job, where a
TPU VM's metadata would do it on Cloud.

$FAKE_GCLOUD_DIR/script.json scripts the misfortunes:
  workers             processes per slice (default 1)
  fail_creates        the next N creates fail for lack of capacity
  queued_waiting      describes a queued resource stays WAITING_FOR_RESOURCES (-1: forever)
  preempt_trainings   which training runs (1 = the first) lose their slice
  preempt_after_checkpoint_in
                      a workdir: preempt once it holds a finished checkpoint (else at once)
Every call is appended to $FAKE_GCLOUD_DIR/calls.jsonl.
"""

import contextlib
import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.environ["FAKE_GCLOUD_DIR"]
STATE = os.path.join(ROOT, "state.json")
# JAX's SLURM coordinator port: 61440 + SLURM_JOB_ID % 4096.
SLURM_PORT_BASE = 61440


@contextlib.contextmanager
def state():
    """The state, read and written back under a lock (ssh and delete may overlap)."""
    with open(os.path.join(ROOT, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(STATE) as f:
                s = json.load(f)
        except FileNotFoundError:
            s = {"nodes": {}, "queued": {}, "trainings": 0}
        yield s
        with open(STATE + ".tmp", "w") as f:
            json.dump(s, f)
        os.replace(STATE + ".tmp", STATE)


def script() -> dict:
    try:
        with open(os.path.join(ROOT, "script.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def fail(message: str, status: int = 1):
    print(f"ERROR: (fake gcloud) {message}", file=sys.stderr)
    sys.exit(status)


def flag(args: list[str], name: str, default=None):
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return default


def worker_homes(name: str) -> list[str]:
    base = os.path.join(ROOT, "nodes", name)
    workers = script().get("workers", 1)
    return [os.path.join(base, f"worker{i}") for i in range(workers)]


def new_node(s: dict, name: str, accelerator: str) -> None:
    # A new slice has bare disks: nothing installed, no logs.
    shutil.rmtree(os.path.join(ROOT, "nodes", name), ignore_errors=True)
    for home in worker_homes(name):
        os.makedirs(home)
    s["nodes"][name] = {
        "name": name,
        "state": "READY",
        "health": "HEALTHY",
        "acceleratorType": accelerator,
        "pgids": [],
    }


def kill_workers(node: dict) -> None:
    for pgid in node.get("pgids", []):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    node["pgids"] = []


def take_capacity() -> bool:
    """False (and one failure fewer to go) while creates are scripted to fail."""
    path = os.path.join(ROOT, "script.json")
    sc = script()
    if sc.get("fail_creates", 0) > 0:
        sc["fail_creates"] -= 1
        with open(path, "w") as f:
            json.dump(sc, f)
        return False
    return True


def tpu_vm(verb: str, name: str, args: list[str]) -> int:
    if verb == "create":
        if not take_capacity():
            fail("RESOURCE_EXHAUSTED: There is no more capacity in the zone")
        with state() as s:
            if name in s["nodes"]:
                fail(f"ALREADY_EXISTS: node {name}")
            new_node(s, name, flag(args, "accelerator-type"))
        return 0
    if verb == "describe":
        with state() as s:
            node = s["nodes"].get(name)
        if node is None:
            fail(f"NOT_FOUND: Resource 'nodes/{name}' was not found")
        print(json.dumps({k: v for k, v in node.items() if k != "pgids"}))
        return 0
    if verb == "delete":
        with state() as s:
            node = s["nodes"].pop(name, None)
            if node is None:
                fail(f"NOT_FOUND: Resource 'nodes/{name}' was not found")
            kill_workers(node)
        return 0
    if verb == "scp":
        source, target = args[0], args[1].split(":", 1)[1]
        with state() as s:
            if s["nodes"].get(name, {}).get("state") != "READY":
                fail("ssh: connect to host: Connection refused", 255)
        for home in worker_homes(name):
            shutil.copy(source, os.path.join(home, target))
        return 0
    if verb == "ssh":
        return ssh(name, flag(args, "worker"), flag(args, "command"))
    fail(f"tpu-vm {verb} is not faked")


def free_slurm_job_id() -> int:
    # In random order: from the first port on, two slices trained side by side (pytest -n 2)
    # would both pick the lowest free one.
    for offset in random.sample(range(4096), 4096):
        with socket.socket() as sock:
            try:
                sock.bind(("", SLURM_PORT_BASE + offset))
            except OSError:
                continue
        return 4096 * 1000 + offset
    raise RuntimeError("no free port")


def has_checkpoint(workdir: str) -> bool:
    with contextlib.suppress(FileNotFoundError):
        names = os.listdir(os.path.join(workdir, "checkpoints"))
        return any(re.fullmatch(r"\d+", name) for name in names)
    return False


def ssh(name: str, worker: str, command: str) -> int:
    homes = worker_homes(name)
    with state() as s:
        if s["nodes"].get(name, {}).get("state") != "READY":
            fail("ssh: connect to host: Connection refused", 255)
        training = "bert4rec_jax.train --distributed" in command
        if training:
            s["trainings"] += 1
        number = s["trainings"]
    sc = script()
    preempt = training and number in sc.get("preempt_trainings", [])
    watched = sc.get("preempt_after_checkpoint_in")
    if preempt and watched is None:
        return preempted(name, [], [])  # lost before the training started
    chosen = range(len(homes)) if worker == "all" else [int(worker)]
    job = {
        "SLURM_JOB_ID": str(free_slurm_job_id()),
        "SLURM_NTASKS": str(len(homes)),
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_STEP_NUM_NODES": "1",
    }
    procs = []
    for i in chosen:
        env = dict(os.environ, **job, HOME=homes[i], FAKE_WORKER=str(i))
        env.update(SLURM_PROCID=str(i), SLURM_LOCALID=str(i))
        procs.append(
            subprocess.Popen(["bash", "-c", command], cwd=homes[i], env=env, start_new_session=True)
        )
    with state() as s:
        s["nodes"][name]["pgids"] += [p.pid for p in procs]
    while any(p.poll() is None for p in procs):
        if preempt and has_checkpoint(watched):
            return preempted(name, [homes[i] for i in chosen], procs)
        time.sleep(0.1)
    statuses = [p.returncode for p in procs]
    return next((st for st in statuses if st != 0), 0)


def preempted(name: str, homes: list[str], procs: list[subprocess.Popen]) -> int:
    """The preemption notice (SIGTERM to each worker's training), then the slice is gone."""
    for home in homes:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            with open(os.path.join(home, "bert4rec_train.pid")) as f:
                os.kill(int(f.read()), signal.SIGTERM)
    deadline = time.monotonic() + 300
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    with state() as s:
        node = s["nodes"][name]
        kill_workers(node)
        node["state"] = "PREEMPTED"
        for request in s["queued"].values():
            if request["node"] == name:
                request["state"] = {"state": "SUSPENDED"}
    fail("ssh: connection to the worker lost (preempted)", 255)


def queued(verb: str, name: str, args: list[str]) -> int:
    if verb == "create":
        if not take_capacity():
            fail("RESOURCE_EXHAUSTED: the request was refused")
        with state() as s:
            if name in s["queued"]:
                fail(f"ALREADY_EXISTS: queued resource {name}")
            s["queued"][name] = {
                "name": name,
                "node": flag(args, "node-id"),
                "accelerator": flag(args, "accelerator-type"),
                "state": {"state": "WAITING_FOR_RESOURCES"},
                "waiting": script().get("queued_waiting", 0),
            }
        return 0
    if verb == "describe":
        with state() as s:
            request = s["queued"].get(name)
            if request is None:
                fail(f"NOT_FOUND: Resource 'queuedResources/{name}' was not found")
            if request["state"]["state"] == "WAITING_FOR_RESOURCES":
                if request["waiting"] == 0:
                    request["state"] = {"state": "ACTIVE"}
                    new_node(s, request["node"], request["accelerator"])
                elif request["waiting"] > 0:
                    request["waiting"] -= 1
            shown = {k: v for k, v in request.items() if k != "waiting"}
        print(json.dumps(shown))
        return 0
    if verb == "delete":
        with state() as s:
            request = s["queued"].pop(name, None)
            if request is None:
                fail(f"NOT_FOUND: Resource 'queuedResources/{name}' was not found")
            node = s["nodes"].get(request["node"])
            if node is not None:
                if "--force" not in args:
                    fail("FAILED_PRECONDITION: the queued resource has a node; use --force")
                kill_workers(node)
                del s["nodes"][request["node"]]
        return 0
    fail(f"queued-resources {verb} is not faked")


def main(argv: list[str]) -> int:
    with open(os.path.join(ROOT, "calls.jsonl"), "a") as f:
        f.write(json.dumps(argv) + "\n")
    if argv[:3] != ["compute", "tpus", "tpu-vm"] and argv[:3] != [
        "compute",
        "tpus",
        "queued-resources",
    ]:
        fail(f"not faked: gcloud {' '.join(argv)}")
    verb, name, rest = argv[3], argv[4], argv[5:]
    if verb == "scp":  # gcloud ... scp SOURCE NAME:TARGET
        name, rest = argv[5].split(":", 1)[0], argv[4:]
    return (tpu_vm if argv[2] == "tpu-vm" else queued)(verb, name, rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
