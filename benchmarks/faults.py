"""Real faults for a training run: SIGKILL or SIGTERM it at planned moments, restart it each time
with the same command, and compare its checkpoints bit for bit with an uninterrupted run.

benchmarks/crash_resume.py makes 20 such kills and prints a table; tests/fault_test.py,
preemption_test.py and others make a few. The runs are `python -m bert4rec_jax.train` with
configs/tiny.py, started in this checkout (the kinds of kill are in the benchmark's docstring).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

# The checkout: every run starts here, with its configs/tiny.py.
REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.py"

# Orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp...` and renames it to `<step>` when
# complete, so a directory with this marker is a save in progress (or one cut short).
PARTIAL_MARKER = ".orbax-checkpoint-tmp"
KINDS = ("step", "save", "startup", "term_startup", "term_step", "term_save", "term_end")
TERM = "term_"  # the prefix of the kinds that send SIGTERM


@dataclasses.dataclass(frozen=True)
class Kill:
    """One planned SIGKILL."""

    kind: str  # one of KINDS
    step: int  # "step"/"save": the earliest checkpoint step that triggers it
    delay: float  # "step"/"startup": seconds waited after the trigger


@dataclasses.dataclass
class Start:
    """What happened to one start of the crashed run."""

    kill: Kill | None  # the planned kill; None for the last start, which runs to the end
    killed: bool  # the kill happened (else the run ended by itself first)
    resumed_from: int | None  # latest complete checkpoint when it started
    ended_at: int | None  # latest complete checkpoint when it ended
    returncode: int
    partial: list[str]  # partial checkpoint directories left behind after it ended
    seconds: float
    log: pathlib.Path


def plan_kills(
    num_kills: int, num_steps: int, every: int, seed: int, kinds: Sequence[str] = KINDS
) -> list[Kill]:
    """Seeded kills at increasing checkpoint steps, each of a random kind from `kinds`.

    Args:
      num_kills: how many kills.
      num_steps: the run's config.num_train_steps.
      every: its config.checkpoint_every_steps.
      seed: seeds the plan.
      kinds: the kinds to use, in equal shares (as far as `num_kills` divides), shuffled, so
        that every kind happens once there are at least as many kills as kinds.

    Returns:
      The kills in the order they are to happen.
    """
    steps = list(range(every, num_steps - every + 1, every))  # not the last: it must run on
    if num_kills > len(steps):
        raise ValueError(
            f"--kills={num_kills} needs more checkpoints than {num_steps} steps with one every "
            f"{every} give ({len(steps)} before the last); raise --steps"
        )
    rng = random.Random(seed)
    chosen = [kinds[i % len(kinds)] for i in range(num_kills)]
    ends = [k for k in chosen if k == "term_end"]
    # (Without term_end, the same draws in the same order as before it existed: same plans.)
    targets = sorted(rng.sample(steps, num_kills - len(ends)))
    rng.shuffle(chosen)
    # After the last step no start trains: the kills at the end come after all the others.
    chosen = [k for k in chosen if k != "term_end"]
    kills = []
    for kind, step in zip(chosen, targets, strict=True):
        base = kind.removeprefix(TERM)
        delay = rng.uniform(0.0, 8.0) if base == "startup" else rng.uniform(0.0, 0.25)
        kills.append(Kill(kind, step, 0.0 if base == "save" else delay))
    kills += [Kill(kind, num_steps, rng.uniform(0.0, 1.0)) for kind in ends]
    return kills


def train_command(
    workdir: pathlib.Path, data_dir: pathlib.Path, overrides: dict[str, Any]
) -> list[str]:
    """The user's command line for a tiny run with the given config overrides."""
    return [
        sys.executable,
        "-m",
        "bert4rec_jax.train",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]


def subprocess_env(compilation_cache: pathlib.Path | None) -> dict[str, str]:
    """One CPU device per process; optionally JAX's persistent compilation cache, which makes
    restarts cheaper the way it does on preemptible accelerators."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    if compilation_cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(compilation_cache)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def complete_steps(workdir: pathlib.Path) -> list[int]:
    """Steps of the complete checkpoints in `workdir/checkpoints`, ascending."""
    try:
        names = os.listdir(workdir / "checkpoints")
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if n.isdigit())


def partial_saves(workdir: pathlib.Path) -> dict[str, int]:
    """Partial checkpoint directories in `workdir/checkpoints`, by name, with their step."""
    try:
        names = os.listdir(workdir / "checkpoints")
    except FileNotFoundError:
        return {}
    return {n: int(n.split(".", 1)[0]) for n in names if PARTIAL_MARKER in n}


def _latest(workdir: pathlib.Path) -> int | None:
    steps = complete_steps(workdir)
    return steps[-1] if steps else None


def _triggered(
    kill: Kill, workdir: pathlib.Path, resumed_from: int | None, started: float, log: pathlib.Path
):
    """Whether `kill` is due; checkpoints from before this start never trigger it."""
    floor = -1 if resumed_from is None else resumed_from
    kind = kill.kind.removeprefix(TERM)
    if kind == "startup":
        return time.monotonic() - started >= kill.delay
    if kind == "end":
        text = log.read_text()
        return f"step {kill.step}/{kill.step} " in text or "Nothing to train" in text
    if kind == "save":
        return any(s >= kill.step and s > floor for s in partial_saves(workdir).values())
    latest = _latest(workdir)
    return latest is not None and latest >= kill.step and latest > floor


def run_once(
    command: list[str],
    workdir: pathlib.Path,
    kill: Kill | None,
    env: dict[str, str],
    log: pathlib.Path,
    timeout: float,
) -> Start:
    """Starts the run, kills it as `kill` says (or lets it finish when None), and reports.

    Raises:
      TimeoutError: the process outlived `timeout` seconds (it is killed first).
    """
    resumed_from = _latest(workdir)
    sent = False
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        started = time.monotonic()
        if kill is not None and kill.kind == TERM + "startup":
            # Until Python runs train.py's first lines, no program can catch a signal; the
            # delay counts from there (typically a few tenths of a second after the start).
            _wait_until_catching(proc, signal.SIGTERM, timeout)
            started = time.monotonic()
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"{' '.join(command)} ran over {timeout} s; see {log}")
                if kill is not None and _triggered(kill, workdir, resumed_from, started, log):
                    if kill.kind.removeprefix(TERM) in ("step", "end"):
                        time.sleep(kill.delay)
                    proc.send_signal(_signal(kill))
                    sent = True
                    break
                # Saves of the tiny model take tens of milliseconds: poll well below that.
                time.sleep(0.001)
            returncode = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Start(
        kill=kill,
        # A SIGTERMed start that exits 0 was stopped cleanly; one that had finished first was not.
        killed=sent and (returncode == -signal.SIGKILL or _signal(kill) == signal.SIGTERM),
        resumed_from=resumed_from,
        ended_at=_latest(workdir),
        returncode=returncode,
        partial=sorted(partial_saves(workdir)),
        seconds=time.monotonic() - started,
        log=log,
    )


def _wait_until_catching(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Waits until `proc` has a handler for `sig` (Linux: SigCgt in /proc/<pid>/status)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            status = pathlib.Path(f"/proc/{proc.pid}/status").read_text()
        except FileNotFoundError:
            return
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) >> (sig - 1) & 1:
            return
        time.sleep(0.002)


def _signal(kill: Kill) -> int:
    return signal.SIGTERM if kill.kind.startswith(TERM) else signal.SIGKILL


def read_state(workdir: pathlib.Path, step: int) -> Any:
    """The whole train state of one complete checkpoint, as numpy arrays."""
    import jax

    from bert4rec_jax import checkpointing

    return jax.device_get(checkpointing.restore_train_state(workdir, step)[0])


def same_bits(a: Any, b: Any) -> bool:
    """Whether two pytrees of arrays have the same structure, dtypes, shapes and bytes."""
    import jax
    import numpy as np

    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    if tree_a != tree_b:
        return False
    for x, y in zip(leaves_a, leaves_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


@dataclasses.dataclass
class CrashRun:
    """The crashed run's starts and the states read after each of them."""

    starts: list[Start]
    snapshots: list[tuple[int, Any]]  # (step, state) after each start; None step: no checkpoint


def crash_and_resume(
    workdir: pathlib.Path,
    command: list[str],
    kills: Sequence[Kill],
    env: dict[str, str],
    logs: pathlib.Path,
    timeout: float = 300.0,
) -> CrashRun:
    """Runs `command` once per kill, killing it as planned, then once more to the end.

    A start that ends by itself before its kill (the run got past the last planned moment)
    ends the sequence: the kills left are not made.

    Args:
      workdir: the run's workdir (also in `command`).
      command: the training command, restarted unchanged each time.
      kills: the plan (see `plan_kills`).
      env: the subprocesses' environment.
      logs: a directory for each start's output (`start_<i>.log`).
      timeout: seconds allowed to each start.

    Returns:
      The starts and, after each, the latest complete checkpoint's state.

    Raises:
      RuntimeError: a start that was not killed failed (with the end of its log).
    """
    logs.mkdir(parents=True, exist_ok=True)
    starts, snapshots = [], []
    for i, kill in enumerate([*kills, None]):
        start = run_once(command, workdir, kill, env, logs / f"start_{i}.log", timeout)
        starts.append(start)
        step = start.ended_at
        snapshots.append((step, None if step is None else read_state(workdir, step)))
        if start.killed and _signal(kill) == signal.SIGTERM and start.returncode != 0:
            tail = start.log.read_text()[-3000:]
            raise RuntimeError(f"start {i} exited with {start.returncode} on SIGTERM:\n{tail}")
        if not start.killed:
            if start.returncode != 0:
                tail = start.log.read_text()[-3000:]
                raise RuntimeError(f"start {i} exited with {start.returncode}:\n{tail}")
            break
    return CrashRun(starts, snapshots)


def judge_restarts(run: CrashRun, reference: pathlib.Path) -> list[tuple[int, bool]]:
    """For each restart (start 1..K): the step that judges it and whether it is bit-exact.

    A restart is judged by the first snapshot, from its own start or a later one, of a checkpoint
    newer than the one it resumed from (a start killed before its first save leaves the next start
    to show whether the resume was right); the final state judges a restart that resumed from it.
    """
    verdicts, cache = [], {}
    # A SIGTERM stops at any step; only those the reference saved can be compared.
    comparable = set(complete_steps(reference))
    for j in range(1, len(run.starts)):
        resumed = run.starts[j].resumed_from
        floor = -1 if resumed is None else resumed
        step, state = next(
            (
                (s, st)
                for s, st in run.snapshots[j:]
                if s is not None and s > floor and s in comparable
            ),
            run.snapshots[-1],
        )
        if step not in cache:
            cache[step] = same_bits(state, read_state(reference, step))
        verdicts.append((step, cache[step]))
    return verdicts


def run_reference(
    workdir: pathlib.Path,
    data_dir: pathlib.Path,
    overrides: dict[str, Any],
    env: dict[str, str],
    log: pathlib.Path,
    timeout: float = 600.0,
) -> None:
    """The uninterrupted run, keeping every checkpoint so that any step can be compared.

    Raises:
      RuntimeError: the run failed (with the end of its log).
    """
    command = train_command(workdir, data_dir, {**overrides, "keep_checkpoints": 10**6})
    with open(log, "w") as out:
        code = subprocess.run(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
        ).returncode
    if code != 0:
        raise RuntimeError(f"the reference run exited with {code}:\n{log.read_text()[-3000:]}")


def prepare_data(data_dir: pathlib.Path) -> None:
    """Prepares the tiny config's corpus once, so that no two processes prepare it at once and
    every start reads the cache."""
    from bert4rec_jax import experiment
    from bert4rec_jax.config import RunConfig

    # Loaded by its path, as --config= loads it: the library does not need configs/ importable.
    spec = importlib.util.spec_from_file_location("bert4rec_tiny_config", TINY_CONFIG)
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    config = tiny.get_config()
    config.data_dir = str(data_dir)
    experiment.load_data(RunConfig.from_config_dict(config).data)
