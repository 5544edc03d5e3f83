#!/usr/bin/env python3
"""Trains on a Cloud TPU slice, and with --until_done keeps it training through preemptions.

    launch/tpu_pod.py --name=bert4rec --zone=us-east5-a --accelerator=v5p-32 --spot --until_done \
      --delete -- --config=configs/steam.py --workdir=gs://BUCKET/steam

In order: create the slice (--create, or --until_done when it is missing), copy this checkout to
every worker and install it, run `python -m bert4rec_jax.train --distributed TRAIN_FLAGS` on all
workers (worker 0's output streams here), and delete the slice at the end (--delete). With
--until_done this runs as a loop on this machine: a slice that is preempted, stopped, deleted or
unhealthy is recreated and the same command runs again, resuming from the workdir's latest
checkpoint, until the run has written its test results.

Python rather than shell because the supervising loop reads gcloud's JSON, keeps counts and
deadlines and must clean up on Ctrl-C; it uses the standard library only, since the launching
machine has gcloud (hence Python) but not necessarily this package. Run --help for the options.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

PROG = "launch/tpu_pod.py"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bert4rec_jax.workdir.RESULTS_FILE: written by process 0 once the test split is evaluated.
RESULTS_FILE = "test_results.json"
# On the workers, where their shell expands `~` (these are quoted into remote commands as is).
REMOTE_REPO = "~/bert4rec_jax"
REMOTE_VENV = "~/bert4rec_venv"
REMOTE_LOG = "~/bert4rec_train.log"
REMOTE_PID = "~/bert4rec_train.pid"
# The generations' base images (cloud.google.com/tpu/docs/runtimes); --version overrides.
DEFAULT_RUNTIMES = {
    "v4-": "tpu-ubuntu2204-base",
    "v5litepod-": "v2-alpha-tpuv5-lite",
    "v5e-": "v2-alpha-tpuv5-lite",
    "v5p-": "v2-alpha-tpuv5",
    "v6e-": "v2-alpha-tpuv6e",
}
# Node states a slice passes through on its way to READY (anything else is lost for training).
COMING_UP = {"CREATING", "STARTING", "RESTARTING", "REPAIRING", "REIMAGING", "UNHIDING"}
# Health values that mean the slice cannot train now (an absent or unspecified one is no news).
UNHEALTHY = {"TIMEOUT", "UNHEALTHY_TENSORFLOW", "UNHEALTHY_MAINTENANCE", "DEPRECATED_UNHEALTHY"}
# Queued resource states on the way to ACTIVE; FAILED, SUSPENDED and the rest end a request.
QUEUED_PENDING = {"CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING"}
# How long the workers get to save a checkpoint after Ctrl-C before the slice is deleted.
STOP_GRACE_S = 180

USAGE = f"{PROG} --name=NAME --zone=ZONE [options] -- TRAIN_FLAGS..."
DESCRIPTION = """\
Runs `python -m bert4rec_jax.train --distributed TRAIN_FLAGS...` on every worker of a TPU slice."""
EPILOG = f"""\
examples:
  {PROG} --name=bert4rec --zone=us-east5-a --accelerator=v5p-32 --create --delete \\
    -- --config=configs/steam.py --workdir=/mnt/shared/steam
  {PROG} --name=bert4rec --zone=us-east5-a --accelerator=v5p-64 --spot --queued \\
    --until_done --delete -- --config=configs/steam.py --workdir=gs://BUCKET/steam"""


class UsageError(Exception):
    """A bad command line: reported with exit status 2 before anything runs."""


class GcloudError(Exception):
    """gcloud failed in a way the launcher cannot work around."""


def log(message: str) -> None:
    """One timestamped line on stderr: every step and state change of the launch."""
    # timezone.utc, not datetime.UTC: the launching machine's Python may be older than 3.11.
    utc = datetime.timezone.utc  # noqa: UP017
    now = datetime.datetime.now(utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"[{now}] tpu_pod: {message}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--name", default="", help="the TPU slice (required)")
    p.add_argument("--zone", default="", help="its zone (required)")
    p.add_argument("--project", default="", help="Google Cloud project (default: gcloud's)")
    p.add_argument("--dry_run", action="store_true", help="print every command and run none")

    g = p.add_argument_group("creating the slice")
    g.add_argument("--create", action="store_true", help="create the slice first")
    g.add_argument(
        "--accelerator", default="", help="the slice type, e.g. v5p-32, v5litepod-16, v6e-16"
    )
    g.add_argument(
        "--version",
        default="",
        help="TPU software version (default: the generation's base image, e.g. v2-alpha-tpuv5)",
    )
    tier = g.add_mutually_exclusive_group()
    tier.add_argument("--spot", action="store_true", help="Spot VMs (cheap, can be preempted)")
    tier.add_argument(
        "--preemptible", action="store_true", help="preemptible VMs (not with --queued)"
    )
    tier.add_argument("--reserved", action="store_true", help="the project's reserved capacity")
    g.add_argument("--network", default="", help="VPC network (gcloud's default: 'default')")
    g.add_argument("--subnetwork", default="", help="its subnetwork")
    g.add_argument(
        "--service_account",
        default="",
        help="the workers' service account (needs write access to a gs:// workdir)",
    )
    g.add_argument(
        "--internal_ips", action="store_true", help="no external IPs (workers need Cloud NAT)"
    )
    g.add_argument("--labels", default="", help="KEY=VALUE,... labels on the slice")
    g.add_argument(
        "--create_flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="passed to the create command as written; repeatable, e.g. "
        "--create_flag=--tags=train --create_flag=--metadata=k=v",
    )
    g.add_argument(
        "--queued",
        action="store_true",
        help="create through `gcloud compute tpus queued-resources` and wait until ACTIVE",
    )
    g.add_argument(
        "--queued_timeout",
        type=float,
        default=6 * 3600,
        metavar="SECONDS",
        help="give up (and withdraw a queued request) when the slice is not ready by then "
        "(default: 6 h)",
    )

    g = p.add_argument_group("running")
    g.add_argument(
        "--skip_install",
        action="store_true",
        help="do not copy and install the checkout again (a rerun on the same slice)",
    )
    g.add_argument(
        "--compilation_cache",
        default=None,
        metavar="DIR",
        help="JAX's persistent compilation cache, shared by the workers: a directory every "
        "worker sees, or gs://... (default: WORKDIR/compilation_cache; empty: none)",
    )
    g.add_argument(
        "--delete",
        action="store_true",
        help="delete the slice at the end, also after a failure or Ctrl-C",
    )

    g = p.add_argument_group("surviving preemptions")
    g.add_argument(
        "--until_done",
        action="store_true",
        help="recreate the slice (creating it when missing) and rerun whenever it is lost, "
        "until the test results exist",
    )
    g.add_argument(
        "--max_retries",
        type=int,
        default=10,
        metavar="N",
        help="with --until_done: give up after N recoveries (failed creates included; default 10)",
    )
    g.add_argument(
        "--retry_wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --until_done: pause before each retry (default 60)",
    )
    g.add_argument(
        "--poll_interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="between state checks while a slice comes up (default 30)",
    )
    return p


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The launcher's options and the training flags (those after `--`).

    Raises:
      UsageError: naming the option at fault.
    """
    if "--" in argv:
        cut = argv.index("--")
        own, train_flags = argv[:cut], argv[cut + 1 :]
    else:
        own, train_flags = argv, []
    parser = _parser()

    def error(message: str):
        raise UsageError(message)

    parser.error = error  # argparse would print and exit; the launcher words its own errors
    args, unknown = parser.parse_known_args(own)
    if unknown:
        raise UsageError(f"unknown option '{unknown[0]}' (training flags go after '--')")
    if not args.name:
        raise UsageError("--name=NAME (the TPU slice) is required")
    if not args.zone:
        raise UsageError("--zone=ZONE is required")
    if not train_flags:
        raise UsageError("no training flags after '--' (at least --config and --workdir)")
    creates = args.create or args.until_done
    capacity = (
        args.spot
        or args.preemptible
        or args.reserved
        or args.network
        or args.subnetwork
        or args.service_account
        or args.internal_ips
        or args.labels
        or args.create_flag
        or args.queued
    )
    if capacity and not creates:
        raise UsageError("capacity and network options need --create or --until_done")
    if creates:
        if not args.accelerator:
            raise UsageError("--create and --until_done need --accelerator=TYPE (e.g. v5p-32)")
        if args.skip_install:
            raise UsageError("--skip_install with --create or --until_done: a new slice is bare")
        if not args.version:
            prefix = next((k for k in DEFAULT_RUNTIMES if args.accelerator.startswith(k)), None)
            if prefix is None:
                raise UsageError(
                    f"no default runtime for --accelerator={args.accelerator}; give --version"
                )
            args.version = DEFAULT_RUNTIMES[prefix]
    if args.preemptible and args.queued:
        raise UsageError("--preemptible is not offered by queued resources; use --spot")
    for flag in args.create_flag:
        if not flag.startswith("--"):
            raise UsageError(f"--create_flag={flag}: give a gcloud flag, e.g. --tags=a,b")
    for name in ("queued_timeout", "retry_wait", "poll_interval"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name}={getattr(args, name)}: must be >= 0")
    if args.max_retries < 0:
        raise UsageError(f"--max_retries={args.max_retries}: must be >= 0")
    workdir = workdir_of(train_flags)
    if args.until_done and not (workdir and (workdir.startswith("/") or "://" in workdir)):
        raise UsageError(
            f"--until_done needs an absolute or gs:// --workdir among the training flags, "
            f"where every attempt resumes and the test results appear (got {workdir!r})"
        )
    if args.compilation_cache is None:
        args.compilation_cache = f"{workdir.rstrip('/')}/compilation_cache" if workdir else ""
    return args, train_flags


def workdir_of(train_flags: list[str]) -> str:
    """The value of --workdir among the training flags ('' when absent)."""
    for i, flag in enumerate(train_flags):
        for spelling in ("--workdir", "-workdir"):
            if flag.startswith(spelling + "="):
                return flag.split("=", 1)[1]
            if flag == spelling and i + 1 < len(train_flags):
                return train_flags[i + 1]
    return ""


class Pod:
    """The gcloud commands for one slice, run (or printed, with --dry_run)."""

    def __init__(self, args: argparse.Namespace, train_flags: list[str]):
        self.args = args
        self.train_flags = train_flags
        self.workdir = workdir_of(train_flags)
        self.where = [f"--zone={args.zone}"]
        if args.project:
            self.where.append(f"--project={args.project}")
        self.training = False  # whether a training command may be running on the workers

    # ---- the commands -------------------------------------------------------------------------

    def _tpu_vm(self, verb: str, *rest: str) -> list[str]:
        return ["gcloud", "compute", "tpus", "tpu-vm", verb, self.args.name, *self.where, *rest]

    def _queued(self, verb: str, *rest: str) -> list[str]:
        return [
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            verb,
            self.args.name,
            *self.where,
            *rest,
        ]

    def create_command(self) -> list[str]:
        """`tpu-vm create`, or `queued-resources create` of a request named like its node."""
        a = self.args
        # Spelled as `gcloud compute tpus tpu-vm create --help` and `queued-resources create
        # --help` spell them (gcloud 528): the same in both, but for --preemptible (tpu-vm only).
        flags = [
            flag
            for value, flag in (
                (a.spot, "--spot"),
                (a.preemptible, "--preemptible"),
                (a.reserved, "--reserved"),
                (a.network, f"--network={a.network}"),
                (a.subnetwork, f"--subnetwork={a.subnetwork}"),
                (a.service_account, f"--service-account={a.service_account}"),
                (a.internal_ips, "--internal-ips"),
                (a.labels, f"--labels={a.labels}"),
            )
            if value
        ]
        flags += a.create_flag
        if a.queued:
            return self._queued(
                "create",
                f"--node-id={a.name}",
                f"--accelerator-type={a.accelerator}",
                f"--runtime-version={a.version}",
                *flags,
            )
        return self._tpu_vm(
            "create", f"--accelerator-type={a.accelerator}", f"--version={a.version}", *flags
        )

    def delete_command(self) -> list[str]:
        if self.args.queued:  # --force: the request's node goes with it
            return self._queued("delete", "--force", "--quiet")
        return self._tpu_vm("delete", "--quiet")

    def ssh_command(self, command: str, worker: str = "all") -> list[str]:
        return self._tpu_vm("ssh", f"--worker={worker}", f"--command={command}")

    def install_command(self) -> str:
        # The TPU images' system Python (3.10 on Ubuntu 22.04) is older than the 3.11 the package
        # needs, and may lack venv: uv (its standalone installer) creates the environment with a
        # Python of its own where the system has none that fits.
        return f"""set -e
rm -rf {REMOTE_REPO} && mkdir -p {REMOTE_REPO} && tar -xzf ~/bert4rec_jax.tgz -C {REMOTE_REPO}
if [ ! -x {REMOTE_VENV}/bin/python ]; then
  export PATH="$HOME/.local/bin:$PATH"
  command -v uv > /dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
  uv venv -q --seed --python 3.11 {REMOTE_VENV}
fi
cd {REMOTE_REPO} && {REMOTE_VENV}/bin/pip install -q -e ".[tpu]\""""

    def train_command(self) -> str:
        """The workers' shell command: the training, its pid kept for a clean stop."""
        # Each flag quoted for the workers' shell (spaces and quotes survive).
        train = f"{REMOTE_VENV}/bin/python -m bert4rec_jax.train --distributed " + " ".join(
            shlex.quote(f) for f in self.train_flags
        )
        cache = ""
        if self.args.compilation_cache:
            # Compiled programs survive the slice: a rerun starts its first step in seconds.
            cache = f"export JAX_COMPILATION_CACHE_DIR={shlex.quote(self.args.compilation_cache)}\n"
        # Worker 0 streams its output back through ssh; the others only write their log file
        # (their output would interleave with worker 0's). The worker number comes from the
        # TPU VM metadata. The subshell writes its pid and becomes the training (exec), so that
        # `kill $(cat ~/bert4rec_train.pid)` reaches the training and nothing else.
        worker_number = (
            "curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/"
            "v1/instance/attributes/agent-worker-number"
        )
        return f"""set -o pipefail; cd {REMOTE_REPO} || exit 1
{cache}train() {{
  (echo "$BASHPID" > {REMOTE_PID} && exec {train})
  local status=$?
  rm -f {REMOTE_PID}
  return $status
}}
if [ "$({worker_number})" = 0 ]; then
  train 2>&1 | tee {REMOTE_LOG}
else
  train > {REMOTE_LOG} 2>&1
fi"""

    @staticmethod
    def stop_command(grace_s: int = STOP_GRACE_S) -> str:
        """SIGTERM to each worker's training (it saves a checkpoint), waiting for it to end."""
        return f"""pid=$(cat {REMOTE_PID} 2> /dev/null) || exit 0
grep -q bert4rec_jax.train /proc/$pid/cmdline 2> /dev/null || exit 0
kill -TERM $pid
for _ in $(seq {grace_s}); do kill -0 $pid 2> /dev/null || exit 0; sleep 1; done
exit 1"""

    def results_command(self) -> str:
        # epath reads gs:// as well as local paths; the venv has it (orbax depends on etils).
        check = (
            "import sys; from etils import epath; "
            "sys.exit(0 if epath.Path(sys.argv[1]).exists() else 3)"
        )
        path = f"{self.workdir.rstrip('/')}/{RESULTS_FILE}"
        return f"{REMOTE_VENV}/bin/python -c {shlex.quote(check)} {shlex.quote(path)}"

    # ---- running them -------------------------------------------------------------------------

    def run(self, command: list[str], timeout: float | None = None) -> int:
        """Runs `command` (its output passes through), or prints it with --dry_run."""
        if self.args.dry_run:
            print("+ " + shlex.join(command), flush=True)
            return 0
        try:
            return subprocess.run(command, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            log(f"gave up after {timeout:.0f} s: {shlex.join(command[:5])}")
            return 124

    def describe(self, queued: bool = False) -> dict | None:
        """The slice's (or its queued request's) description; None when it does not exist.

        Raises:
          GcloudError: when gcloud fails three times for another reason (auth, network, API).
        """
        command = (self._queued if queued else self._tpu_vm)("describe", "--format=json")
        for attempt in range(3):
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode == 0:
                return json.loads(out.stdout)
            if "NOT_FOUND" in out.stderr or "not found" in out.stderr.lower():
                return None
            if attempt < 2:
                time.sleep(min(self.args.poll_interval, 10.0))
        raise GcloudError(f"{shlex.join(command)} failed: {out.stderr.strip()[-500:]}")

    def node_state(self) -> str:
        """READY (usable), a coming-up state, or why it cannot train: ABSENT, PREEMPTED, ..."""
        node = self.describe()
        if node is None:
            return "ABSENT"
        state = node.get("state", "STATE_UNSPECIFIED")
        health = node.get("health", "")
        if state == "READY" and health in UNHEALTHY:
            return f"READY but {health}"
        return state

    def create(self) -> bool:
        """Creates the slice and waits until it can train; False when that failed."""
        a = self.args
        request = None if a.dry_run or not a.queued else self.describe(queued=True)
        if request is not None:
            state = request.get("state", {}).get("state", "")
            if state in QUEUED_PENDING or state == "ACTIVE":
                log(f"queued resource {a.name} exists ({state}): waiting for it")
            else:
                log(f"queued resource {a.name} is {state}: deleting it to ask again")
                self.delete()
                request = None
        if request is None:
            log(f"creating {a.name} ({a.accelerator}{', queued' if a.queued else ''})")
            if self.run(self.create_command()) != 0:
                log(f"creating {a.name} failed")
                return False
        if a.dry_run:
            if a.queued:
                print(
                    f"# every {a.poll_interval:g} s until ACTIVE ({a.queued_timeout:g} s at most):"
                )
                print("+ " + shlex.join(self._queued("describe", "--format=json")))
            return True
        deadline = time.monotonic() + a.queued_timeout
        last = None
        while True:
            if a.queued:
                request = self.describe(queued=True)
                state = "ABSENT" if request is None else request.get("state", {}).get("state", "")
                if state == "ACTIVE":
                    state = self.node_state()  # the request is filled: now the node itself
                elif state not in QUEUED_PENDING:
                    log(f"queued resource {a.name} is {state}")
                    return False
            else:
                state = self.node_state()
            if state != last:
                log(f"{a.name} is {state}")
                last = state
            if state == "READY":
                return True
            if state not in COMING_UP and not (a.queued and state in QUEUED_PENDING):
                return False
            if time.monotonic() > deadline:
                log(f"{a.name} not ready after {a.queued_timeout:g} s (--queued_timeout)")
                # An unattended request filled later would bill a slice nobody uses.
                self.delete()
                raise GcloudError(f"{a.name} did not become ready in time")
            time.sleep(a.poll_interval)

    def delete(self) -> None:
        a = self.args
        if not a.dry_run and self.describe(queued=a.queued) is None:
            log(f"{a.name} is already gone")
            self.training = False
            return
        log(f"deleting {a.name}")
        if self.run(self.delete_command()) != 0:
            log(f"deleting {a.name} failed; delete it by hand: {shlex.join(self.delete_command())}")
        self.training = False

    def install(self) -> int:
        # Why copy the checkout rather than `pip install git+URL` or a wheel: the configs
        # (configs/*.py) are read by path and are not part of the package, the checkout need not
        # be pushed anywhere, and every worker gets exactly the code here, uncommitted edits
        # included. The archive holds git's view of the tree (tracked and untracked-but-not-
        # ignored files), so no virtual environments, data or runs are copied.
        log(f"copying this checkout to every worker of {self.args.name} and installing it")
        with tempfile.TemporaryDirectory() as tmp:
            tarball = os.path.join(tmp, "bert4rec_jax.tgz")
            if self.args.dry_run:
                print(
                    f"+ (cd {shlex.quote(REPO)} && git ls-files -z --cached --others "
                    f"--exclude-standard | tar -czf {shlex.quote(tarball)} --null -T -)"
                )
            else:
                _archive_checkout(tarball)
            target = f"{self.args.name}:bert4rec_jax.tgz"
            scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, target, *self.where]
            status = self.run([*scp, "--worker=all"])
        if status != 0:
            return status
        return self.run(self.ssh_command(self.install_command()))

    def train(self) -> int:
        log(f"training on every worker of {self.args.name}")
        self.training = True
        status = self.run(self.ssh_command(self.train_command()))
        self.training = False  # ended (Ctrl-C while it runs leaves this True, for stop_training)
        if not self.args.dry_run:
            log(f"training command exited with status {status}")
        return status

    def stop_training(self) -> None:
        """Asks the workers' training to save and stop, waiting a bounded time."""
        log(f"asking the training on {self.args.name} to save a checkpoint and stop")
        self.run(self.ssh_command(self.stop_command()), timeout=STOP_GRACE_S + 60)
        self.training = False

    def results_exist(self) -> bool:
        return self.run(self.ssh_command(self.results_command(), worker="0")) == 0


def _archive_checkout(tarball: str) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    with tarfile.open(tarball, "w:gz") as tar:
        for path in listed.split("\0"):
            # Files deleted but not yet committed are still listed by git.
            if path and os.path.lexists(os.path.join(REPO, path)):
                tar.add(os.path.join(REPO, path), arcname=path, recursive=False)


def launch_once(pod: Pod) -> int:
    """Create (if asked), install, train: the exit status of the training (1 on a failure)."""
    a = pod.args
    if (a.create or a.until_done) and not pod.create():
        return 1
    if not a.skip_install and pod.install() != 0:
        log("installing failed")
        return 1
    if pod.train() != 0:
        log(f"training failed on some worker; its log is {REMOTE_LOG} there, e.g.")
        print(
            f"  gcloud compute tpus tpu-vm ssh {a.name} --zone={a.zone} --worker=1 "
            f"--command='tail -n 100 {REMOTE_LOG}'",
            file=sys.stderr,
        )
        return 1
    return 0


def until_done(pod: Pod) -> int:
    """Trains until the test results exist, recovering lost slices; the exit status."""
    a = pod.args
    retries = 0

    def may_retry(why: str) -> bool:
        nonlocal retries
        if retries >= a.max_retries:
            log(f"{why}; no retries left (--max_retries={a.max_retries}), stopping")
            return False
        retries += 1
        log(f"{why}; retry {retries} of {a.max_retries} in {a.retry_wait:g} s")
        time.sleep(a.retry_wait)
        return True

    if a.dry_run:  # one pass: what a first attempt runs
        status = launch_once(pod)
        print(f"# --until_done: after each attempt, while {a.name} is READY, are there results?")
        print("+ " + shlex.join(pod.ssh_command(pod.results_command(), worker="0")))
        print(f"# if {a.name} was lost instead: delete, create, install and train again")
        print(f"# (at most {a.max_retries} times, {a.retry_wait:g} s apart)")
        return status
    while True:
        state = pod.node_state()
        if state != "READY":
            if state != "ABSENT":
                log(f"{a.name} is {state}: deleting it to create it again")
                pod.delete()
            if not pod.create():
                if may_retry(f"could not create {a.name}"):
                    continue
                return 1
        else:
            log(f"{a.name} is READY")
        if pod.install() != 0:
            state = pod.node_state()
            if state == "READY":
                log("installing failed on a READY slice: not retried (see its output above)")
                return 1
            if may_retry(f"{a.name} became {state} while installing"):
                continue
            return 1
        status = pod.train()
        state = pod.node_state()
        if state == "READY":
            if pod.results_exist():
                log(f"the test results are in {pod.workdir}: done")
                return 0
            if status != 0:
                log(
                    f"training failed (status {status}) on a READY slice: a training error, not "
                    f"retried; the workers' logs are {REMOTE_LOG}"
                )
                return 1
            why = "training stopped before its end (SIGTERM?) on a READY slice"
        else:
            why = f"{a.name} is {state}"
        if not may_retry(why):
            return 1


def main(argv: list[str]) -> int:
    try:
        args, train_flags = parse_args(argv)
    except UsageError as e:
        print(f"{PROG}: {e}\nrun {PROG} --help for usage", file=sys.stderr)
        return 2
    pod = Pod(args, train_flags)
    if args.compilation_cache:
        log(f"compilation cache: {args.compilation_cache}")

    # SIGTERM (a closing terminal, `kill`) ends the launch like Ctrl-C, with the same cleanup.
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    status = 1
    try:
        status = until_done(pod) if args.until_done else launch_once(pod)
    except KeyboardInterrupt:
        status = 130
        log("interrupted")
        if pod.training and not args.dry_run:
            try:
                pod.stop_training()
            except KeyboardInterrupt:
                log("interrupted again: not waiting for the workers")
    except GcloudError as e:
        log(str(e))
    finally:
        if args.delete:
            # Ctrl-C now would leave a billed slice behind: let the delete finish.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                pod.delete()
            except GcloudError as e:
                log(f"{e}; delete {args.name} by hand: {shlex.join(pod.delete_command())}")
    log(f"exit status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
