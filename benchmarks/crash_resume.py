"""Crash and resume: SIGKILLs or SIGTERMs a training run at random moments, restarting it each
time, and compares it bit for bit with an uninterrupted run.

    python benchmarks/crash_resume.py --kills=20 --seed=0
    python benchmarks/crash_resume.py --kills=20 --kinds=term_startup,term_step,term_save,term_end

Both runs are `python -m bert4rec_jax.train --config=configs/tiny.py` on one CPU device, with a
checkpoint every `--every` steps. The uninterrupted reference runs first and keeps all its
checkpoints; the crashed run keeps the default few, so Orbax also deletes old ones while it is
being killed. All processes share JAX's persistent compilation cache, so restarts skip compiling,
as they can on preemptible accelerators. The kills follow a seeded plan (which checkpoint step
triggers each, of which kind, after what delay); where a kill then lands depends on the machine's
timing, so the plan, not the outcome, is reproducible. Kinds:

  step     a random delay (0 to 0.25 s) after this start's first checkpoint at or past the
           planned step, so anywhere in a step, a save or the logging between them;
  save     as soon as a checkpoint of this start is being written (Orbax's `*.orbax-checkpoint-tmp*`
           directory exists); the "partial" column then shows the save it cut short;
  startup  a random delay (0 to 8 s) after the process starts: imports, restore or compilation.

The `term_*` kinds send SIGTERM at the same moments (`term_startup`, `term_step`, `term_save`), or
(`term_end`) a random 0 to 1 s after the log shows the last step or, in a rerun with nothing to
train, "Nothing to train": the final save, the best-parameter restore or the test evaluation. A
SIGTERMed start must exit 0 by itself (a clean stop); `term_end` kills come last in a plan, as no
start trains after them. A stop at a step the reference has no checkpoint of is judged by the
next checkpoint that the reference has.

How a resume is judged: after every kill, and at the end, the whole train state of the latest
complete checkpoint (step, parameters, optimizer state, RNG) is read; the restart after a kill is
bit-exact when the first such checkpoint written after it equals the reference's checkpoint of the
same step in every bit (a restart killed before its first save is judged by the next one's). Prints
one row per kill, then "N/K bit-exact" (restarts), whether the final state is, and whether the
test metrics (computed by the final start from the best or last parameters) are equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
# Runnable as a script from anywhere in the checkout.
sys.path.insert(0, str(REPO))

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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill plan")
    parser.add_argument("--steps", type=int, default=100, help="config.num_train_steps")
    parser.add_argument("--every", type=int, default=2, help="config.checkpoint_every_steps")
    parser.add_argument(
        "--eval_every", type=int, default=0, help="config.eval.every_steps (validation + best/)"
    )
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"kill kinds, from {KINDS}")
    parser.add_argument("--dir", default="", help="where runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    if bad := [k for k in kinds if k not in KINDS]:
        parser.error(f"--kinds: unknown {bad}; choose from {KINDS}")
    kills = plan_kills(args.kills, args.steps, args.every, args.seed, kinds)

    from absl import logging as absl_logging

    from bert4rec_jax import workdir as workdir_lib

    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's notes on read-only managers
    root = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="crash_resume_")).absolute()
    crashed, reference, data_dir = root / "crashed", root / "reference", root / "data"
    for d in (crashed, reference, root / "jax_cache"):
        shutil.rmtree(d, ignore_errors=True)
    overrides = {
        "num_train_steps": args.steps,
        "checkpoint_every_steps": args.every,
        "eval.every_steps": args.eval_every,
    }
    prepare_data(data_dir)
    # The reference runs first and fills the compilation cache that every start then reads.
    env = subprocess_env(root / "jax_cache")
    t0 = time.perf_counter()
    run_reference(reference, data_dir, overrides, env, root / "reference.log")
    t1 = time.perf_counter()
    command = train_command(crashed, data_dir, overrides)
    run = crash_and_resume(crashed, command, kills, env, root / "logs")
    t2 = time.perf_counter()

    verdicts = judge_restarts(run, reference)
    # Per kill: its kind and planned step; the checkpoints the killed start resumed from and left;
    # its seconds; the step that judged the restart after it (= bit-exact, X not); partial saves.
    print(f"{'kill':>4} {'kind':>12} {'plan':>5} {'from':>5} {'to':>5} {'s':>5}  judged  partial")
    for i, (start, (step, exact)) in enumerate(zip(run.starts, verdicts, strict=False)):
        kill = start.kill
        print(
            f"{i + 1:>4} {kill.kind:>12} {kill.step:>5} {start.resumed_from!s:>5} "
            f"{start.ended_at!s:>5} {start.seconds:5.1f}  {step:>4} {'=' if exact else 'X'}  "
            f"{', '.join(start.partial) or '-'}"
        )
    mid_save = sum(1 for s in run.starts[:-1] if s.kill.kind.endswith("save") and s.partial)
    final_step = run.snapshots[-1][0]
    final_exact = same_bits(run.snapshots[-1][1], read_state(reference, final_step))
    made = len(run.starts) - 1
    print(
        f"{sum(e for _, e in verdicts)}/{len(kills)} bit-exact"
        + (
            f" ({len(kills) - made} kills not made: the run finished first)"
            if made < len(kills)
            else ""
        )
        + f"; final state (step {final_step}) {'bit-exact' if final_exact else 'DIFFERS'}"
        + f"; {mid_save} of {sum(s.kill.kind.endswith('save') for s in run.starts[:-1])} save kills"
        " left a partial checkpoint"
    )
    # The test metrics come from the best validated parameters (or the last ones): equal results
    # also show that the best checkpoint survived the kills.
    results = [json.loads((d / workdir_lib.RESULTS_FILE).read_text()) for d in (crashed, reference)]
    # The stamps differ by design: the reference's config keeps every checkpoint.
    stamps = [r.pop("run", None) for r in results]
    print(f"test results {'equal' if results[0] == results[1] else 'DIFFER'}: {results[0]}")
    print(f"stamps (run identity): crashed {stamps[0]}, reference {stamps[1]}")
    termed = [s for s in run.starts[:-1] if s.kill.kind.startswith(TERM)]
    if termed:
        clean = sum(s.returncode == 0 for s in termed)
        where = ", ".join(_stop_phase(s.log) for s in termed)
        print(f"SIGTERM: {len(termed)} starts, exit status 0 in {clean} (stopped: {where})")
    print(
        f"reference {t1 - t0:.0f} s; crashed run {len(run.starts)} starts, {t2 - t1:.0f} s; "
        f"files in {root}"
    )


def _stop_phase(log: pathlib.Path) -> str:
    """Where a SIGTERMed start stopped, from its log."""
    text = log.read_text()
    for pattern, phase in (
        ("before the run began", "startup"),
        ("before training began", "before-loop"),
        ("Stopping at step", "loop"),
        ("after step", "final-save"),
        ("before the test evaluation", "best-restore"),
        ("during the test evaluation", "test"),
    ):
        if pattern in text:
            return phase
    return "none"


def prepare_data(data_dir: pathlib.Path) -> None:
    """Prepares the tiny config's corpus once, so that no two processes prepare it at once and
    every start reads the cache."""
    from bert4rec_jax import experiment
    from configs import tiny

    config = tiny.get_config()
    config.data_dir = str(data_dir)
    experiment.load_data(config)


if __name__ == "__main__":
    main()
