"""A recipe search on validation: runs of one config that each change a few fields, ranked by
the validation metric. The test split is never evaluated (every run is `--notest`).

    python benchmarks/search.py --config=configs/ml_100k_sasrec.py --workroot=/tmp/search \
        --set=manual_dir=../shared/data \
        --vary=learning_rate=1e-3,3e-3 --vary=model.hidden_dropout=0.2,0.5

`--vary=field=v1,v2,...` changes one field at a time from the base config (one run per value,
plus the base itself); with `--grid` every combination of the `--vary` values runs instead.
`--trial=name:field=value,field=value` adds a hand-made run; `--set=field=value` applies to all.
Each run is `python -m bert4rec_jax.train --notest` in `<workroot>/<run>/seed<S>`, on the
config's split (use the standard one: it keeps a validation item apart). A finished run is not
repeated, so a search resumes where it stopped and grows by adding values.

Printed per run: the best validation value of `--metric` over the run's validations (mean ± 95%
Student-t half-width over the seeds), the step of that value, the other protocols' values at the
same step, and the training minutes (wall-clock) and CPU minutes per run. On an accelerator the
same command runs the search at full scale (`--set=num_train_steps=...`).
"""

from __future__ import annotations

import argparse
import itertools
import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

SUMMARY = "search_run.json"


def split_top_level(text: str) -> list[str]:
    """Splits at the commas outside brackets: "a=1,b=(2,3)" -> ["a=1", "b=(2,3)"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p for p in [*parts, text[start:]] if p]


def parse_assignments(text: str) -> list[tuple[str, str]]:
    """E.g. "a=1,b.c=(2,3)" -> [("a", "1"), ("b.c", "(2,3)")]: dotted fields, values as written."""
    out = []
    for part in split_top_level(text):
        field, eq, value = part.partition("=")
        if not eq or not field:
            raise ValueError(f"{part!r}: expected field=value")
        out.append((field.strip(), value.strip()))
    return out


def plan(varies: list[str], grid: bool, trials: list[str]) -> dict[str, list[tuple[str, str]]]:
    """{run name: its [(field, value)] overrides}: the base, then --vary's runs, then --trial's."""
    axes = []
    for text in varies:
        field, eq, values = text.partition("=")
        if not eq or not values:
            raise ValueError(f"--vary={text!r}: expected field=v1,v2,...")
        axes.append([(field, v) for v in split_top_level(values)])
    runs: dict[str, list[tuple[str, str]]] = {"base": []}
    if grid and axes:
        for combo in itertools.product(*axes):
            runs[",".join(f"{f}={v}" for f, v in combo)] = list(combo)
    else:
        for axis in axes:
            for field, value in axis:
                runs[f"{field}={value}"] = [(field, value)]
    for text in trials:
        name, colon, assignments = text.partition(":")
        if not colon or not name:
            raise ValueError(f"--trial={text!r}: expected name:field=value,...")
        runs[name] = parse_assignments(assignments)
    return runs


def best_validation(summary: dict, metric: str) -> dict[str, float]:
    """The validation row whose `metric` is highest (its step and every valid/ value)."""
    rows = [r for r in summary["valid"] if f"valid/{metric}" in r]
    if not rows:
        return {"step": math.nan}
    return max(rows, key=lambda r: r[f"valid/{metric}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the base config file")
    parser.add_argument("--workroot", required=True)
    parser.add_argument("--vary", action="append", default=[], help="field=v1,v2,... (repeat)")
    parser.add_argument("--grid", action="store_true", help="every combination of the --vary")
    parser.add_argument("--trial", action="append", default=[], help="name:field=value,...")
    parser.add_argument("--set", action="append", default=[], help="field=value for every run")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--metric", default="pop100/ndcg@10", help="<protocol>/<metric>")
    parser.add_argument("--also", default="full/ndcg@10", help="more metrics to print, comma")
    parser.add_argument("--runs", default="", help="only these run names (comma)")
    args = parser.parse_args()
    try:
        runs = plan(args.vary, args.grid, args.trial)
        common_overrides = [a for text in args.set for a in parse_assignments(text)]
    except ValueError as e:
        parser.error(str(e))
    if args.runs:
        wanted = args.runs.split(",")
        runs = {k: v for k, v in runs.items() if k in wanted}
    seeds = [int(s) for s in args.seeds.split(",")]
    metrics = [args.metric, *filter(None, args.also.split(","))]

    results = {}
    for name, assignments in runs.items():
        flags = [f"--config.{f}={v}" for f, v in common_overrides + assignments]
        results[name] = [
            common.train_run(
                pathlib.Path(args.workroot) / name / f"seed{seed}",
                args.config,
                [*flags, f"--config.seed={seed}", "--notest"],
                SUMMARY,
            )
            for seed in seeds
        ]
        print_table({name: results[name]}, metrics, header=name == next(iter(runs)))
    print()
    ranked = sorted(
        results, key=lambda n: -common.interval([best_validation(s, args.metric).get(
            f"valid/{args.metric}", math.nan) for s in results[n]])[0]
    )  # fmt: skip
    print(f"Ranked by best validation {args.metric}:")
    print_table({n: results[n] for n in ranked}, metrics)


def print_table(results: dict[str, list[dict]], metrics: list[str], header: bool = True) -> None:
    """A Markdown table: run, best valid metric (± over seeds), its step, the others, minutes."""
    columns = ["run", *(f"valid {m}" for m in metrics), "step", "train min", "CPU min"]
    if header:
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
    for name, summaries in results.items():
        best = [best_validation(s, metrics[0]) for s in summaries]
        cells = [name]
        for m in metrics:
            mean, half = common.interval([b.get(f"valid/{m}", math.nan) for b in best])
            cells.append(f"{mean:.4f}" + ("" if math.isnan(half) else f" ± {half:.4f}"))
        cells.append("/".join(str(b["step"]) for b in best))
        for key in ("train_seconds", "cpu_seconds"):
            mean, half = common.interval([s[key] / 60 for s in summaries])
            cells.append(f"{mean:.1f}" + ("" if math.isnan(half) else f" ± {half:.1f}"))
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
