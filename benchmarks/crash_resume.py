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
import json
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
# Runnable as a script from anywhere in the checkout.
sys.path.insert(0, str(REPO))

from benchmarks.faults import (  # noqa: E402
    KINDS,
    TERM,
    crash_and_resume,
    judge_restarts,
    plan_kills,
    prepare_data,
    read_state,
    run_reference,
    same_bits,
    subprocess_env,
    train_command,
)


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


if __name__ == "__main__":
    main()
