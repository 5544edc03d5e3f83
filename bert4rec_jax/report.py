"""One table of several runs, grouped by config: each metric's mean and 95% interval over seeds.

    python -m bert4rec_jax.report /tmp/ablations
    python -m bert4rec_jax.report /tmp/ablations/ml100k /tmp/ablations/ml100k-weight2 --format=csv
    python -m bert4rec_jax.report RUN... --metrics=test/full/ndcg@10,test/full/coverage@10

Each RUN is a workdir, or a directory searched for workdirs (`benchmarks/ablations.py`'s
`<workroot>/<row>/seed<S>` layout, for one). Runs whose configs differ only in the seed, and in
what does not change the model (paths, mesh, logging and checkpoint cadence, evaluation batch
sizes), are one row, in the order first named; a row is labelled by the directory its runs share.
A metric is `test/<key>` (a key of the run's test_results.json, else of `evaluate`'s
eval_bert4rec_test.json: "pop100/ndcg@10", "full/coverage@10", "history=1-5/full/hr@10") or
`valid/<key>` (the validation of the tested checkpoint, from metrics.jsonl). Cells are
mean ± the half-width of the 95% Student-t interval over the row's runs. Minutes are the
training's wall-clock from ablation_run.json or search_run.json (`benchmarks/common.train_run`),
else from metrics.jsonl's first to last training line (startup not counted; marked ~). A
workdir holding `evaluate --model=popularity`'s results adds a popularity row per data set.
Reads files only: no JAX.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from absl import flags
from etils import epath

from bert4rec_jax import cli
from bert4rec_jax import workdir as workdir_lib
from bert4rec_jax.evaluation.stats import t_interval

FLAGS = flags.FLAGS
# The README's ablation table (benchmarks/ablations.py's METRICS).
DEFAULT_METRICS = (
    "valid/pop100/ndcg@10",
    "test/pop100/ndcg@10",
    "test/full/ndcg@10",
    "test/pop100/hr@10",
    "test/full/hr@10",
)
# Config fields that do not change what is trained or how it is evaluated: runs differing only
# in these (and the seed) share a row.
NOT_GROUPED = (
    "seed",
    *workdir_lib.UNHASHED_FIELDS,
    "mesh",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval.batch_size",
    "eval.item_chunk",
)
# What the popularity baseline depends on: the data, the split and the evaluation.
BASELINE_FIELDS = ("dataset", "split_mode", "synthetic", "file", "eval")
# Summaries `benchmarks/common.train_run` writes beside a run (train_seconds, cpu_seconds).
SUMMARY_FILES = ("ablation_run.json", "search_run.json")
# Directories of a workdir never searched for runs.
_SKIP = {
    workdir_lib.CHECKPOINTS_DIR,
    workdir_lib.BEST_DIR,
    workdir_lib.TENSORBOARD_DIR,
    workdir_lib.SET_ASIDE_DIR,
    workdir_lib.UNUSABLE_DIR,
}
_MAX_DEPTH = 4


def find_runs(paths: Sequence[epath.PathLike]) -> list[epath.Path]:
    """The workdirs named or found under `paths` (directories holding config.json), in order."""
    found: list[epath.Path] = []

    def walk(path: epath.Path, depth: int) -> Iterator[epath.Path]:
        if (path / workdir_lib.CONFIG_FILE).exists():
            yield path
            return
        if depth < _MAX_DEPTH:
            for child in sorted(path.iterdir()):
                if child.is_dir() and child.name not in _SKIP:
                    yield from walk(child, depth + 1)

    for path in map(epath.Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such workdir or directory")
        runs = list(walk(path, 0))
        if not runs:
            raise FileNotFoundError(f"{path} holds no workdir (no {workdir_lib.CONFIG_FILE})")
        found.extend(r for r in runs if r not in found)
    return found


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_json(path: epath.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


@dataclasses.dataclass(frozen=True)
class Run:
    """What the table needs of one workdir.

    Attributes:
      path: the workdir.
      config: its config.json, flattened ("eval.protocols": ...).
      test: its test results ({} when it has none).
      valid: the validation metrics of the tested step ({} when none were logged).
      train_seconds, cpu_seconds: from a run summary; NaN when unknown.
      approximate_time: train_seconds came from metrics.jsonl (startup not counted).
      baseline: {"test": ..., "valid": ...} of `evaluate --model=popularity`, where present.
    """

    path: epath.Path
    config: dict[str, Any]
    test: dict[str, Any]
    valid: dict[str, Any]
    train_seconds: float
    cpu_seconds: float
    approximate_time: bool
    baseline: dict[str, dict[str, Any]]

    def key(self, fields: Sequence[str] | None = None) -> str:
        """The config as a string: all but `NOT_GROUPED`, or only `fields` (and below them)."""

        def under(key: str, names: Sequence[str]) -> bool:
            return any(key == name or key.startswith(name + ".") for name in names)

        # The cut-offs matter only to the temporal split: a leave-one-out run from before they
        # existed and one after share a row.
        unread = () if self.config.get("split_mode") == "temporal" else ("temporal",)
        kept = {
            k: v
            for k, v in self.config.items()
            if not under(k, (*NOT_GROUPED, *unread)) and (fields is None or under(k, fields))
        }
        return json.dumps(kept, sort_keys=True)


def load_run(path: epath.PathLike) -> Run:
    """Reads one workdir's config, results, validation at the tested step and times."""
    path = epath.Path(path)
    config = _flatten(_read_json(path / workdir_lib.CONFIG_FILE))
    test = workdir_lib.read_results(path)
    if not test and (path / workdir_lib.eval_results_file("bert4rec", "test")).exists():
        test = _read_json(path / workdir_lib.eval_results_file("bert4rec", "test"))
    rows = []
    if (path / workdir_lib.METRICS_FILE).exists():
        lines = (path / workdir_lib.METRICS_FILE).read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    validations = [r for r in rows if any(k.startswith("valid/") for k in r)]
    if "step" in test:  # the tested step's (the last, where a resumed run logged it twice)
        validations = [r for r in validations if r.get("step") == test["step"]][-1:]
    else:  # no test (a --notest search run): the best validation, which the run keeps
        chosen = f"valid/{config.get('eval.metric', '')}"
        validations = sorted(validations, key=lambda r: -r.get(chosen, -math.inf))[:1]
    valid = {k.removeprefix("valid/"): v for r in validations for k, v in r.items()}
    train_seconds = cpu_seconds = math.nan
    approximate = False
    summaries = [path / name for name in SUMMARY_FILES if (path / name).exists()]
    if summaries:
        summary = _read_json(summaries[0])
        train_seconds = float(summary.get("train_seconds", math.nan))
        cpu_seconds = float(summary.get("cpu_seconds", math.nan))
    else:
        times = [r["time"] for r in rows if "train/loss" in r and "time" in r]
        if len(times) > 1:
            train_seconds, approximate = times[-1] - times[0], True
    baseline = {}
    for split in ("test", "valid"):
        file = path / workdir_lib.eval_results_file("popularity", split)
        if file.exists():
            baseline[split] = _read_json(file)
    return Run(path, config, test, valid, train_seconds, cpu_seconds, approximate, baseline)


def check_metric(metric: str) -> tuple[str, str]:
    """("test" or "valid", the results key) of a column name; ValueError if it is neither."""
    split, _, key = metric.partition("/")
    if split not in ("test", "valid") or not key:
        raise ValueError(f"--metrics: {metric!r} must be test/<key> or valid/<key>")
    return split, key


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: a config's runs, or a popularity baseline."""

    label: str
    runs: list[Run]
    baseline: bool = False
    config: str = ""

    def values(self, metric: str) -> list[float]:
        """The metric of each run that has it ("test/<key>" or "valid/<key>")."""
        split, key = check_metric(metric)
        out = []
        for run in self.runs:
            results = run.baseline.get(split, {}) if self.baseline else getattr(run, split)
            if isinstance(results.get(key), int | float):
                out.append(float(results[key]))
        return out

    def times(self, which: str) -> list[float]:
        """Minutes of each run that has them ("train" or "cpu")."""
        if self.baseline:
            return []
        seconds = [getattr(run, f"{which}_seconds") for run in self.runs]
        return [s / 60 for s in seconds if not math.isnan(s)]


def _label(runs: list[Run], root: str, alone: bool) -> str:
    """The directory a row's runs share, relative to that of all runs (`root`); when that is the
    root itself, its name, with the runs' paths if other rows share it."""
    common = os.path.commonpath([str(r.path) for r in runs])
    if len(runs) == 1 and re.fullmatch(r"seed\d+", runs[0].path.name):
        common = os.path.dirname(common)  # one seed of a row: the row's name
    if common != root:
        return os.path.relpath(common, root)
    if len(runs) == 1:
        return runs[0].path.name
    name = os.path.basename(common)
    return name if alone else f"{name} ({', '.join(os.path.relpath(r.path, root) for r in runs)})"


def table_rows(runs: Sequence[Run], show_config: bool = False) -> list[Row]:
    """Groups runs by config (first-seen order), then one popularity row per data set."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.key(), []).append(run)
    paths = [str(r.path) for r in runs]
    root = os.path.commonpath(paths) if len(paths) > 1 else str(runs[0].path.parent)
    first = runs[0].config if runs else {}
    rows = []
    for members in groups.values():
        config = ""
        if show_config:
            mine = members[0].config
            differ = [
                f"{k}={mine.get(k)}"
                for k in sorted({*mine, *first})
                if mine.get(k) != first.get(k)
                and not any(k == f or k.startswith(f + ".") for f in NOT_GROUPED)
            ]
            config = ", ".join(differ) or "(the first row's)"
        rows.append(Row(_label(members, root, len(groups) == 1), members, config=config))
    baselines: dict[str, Run] = {}
    for run in runs:
        if run.baseline:
            baselines.setdefault(run.key(BASELINE_FIELDS), run)
    for run in baselines.values():
        dataset = run.config.get("dataset", "?")
        rows.append(Row(f"popularity ({dataset})", [run], baseline=True))
    return rows


def _heading(metric: str) -> str:
    """ "test/pop100/ndcg@10" -> "test pop100 NDCG@10"."""
    words = metric.split("/")
    name, at, k = words[-1].partition("@")
    words[-1] = (name.upper() if name in ("hr", "ndcg", "mrr") else name) + at + k
    return " ".join(words)


def _cell(values: list[float], total: int, digits: int = 4) -> str:
    if not values:
        return ""
    mean, half = t_interval(values)
    text = f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}")
    return text if len(values) == total else f"{text} ({len(values)} of {total})"


def format_table(rows: Sequence[Row], metrics: Sequence[str], fmt: str = "markdown") -> str:
    """The table: Markdown (cells "mean ± half-width") or CSV (mean and half-width columns)."""
    with_cpu = any(row.times("cpu") for row in rows)
    with_config = any(row.config for row in rows)
    if fmt == "csv":
        columns = [*metrics, "train_minutes"] + (["cpu_minutes"] if with_cpu else [])
        header = ["run", "runs"] + [f"{c}{s}" for c in columns for s in ("", " half_width")]
        lines = [",".join(header + (["config"] if with_config else []))]
        for row in rows:
            cells = [_csv(row.label), str(len(row.runs))]
            series = [row.values(m) for m in metrics] + [row.times("train")]
            series += [row.times("cpu")] if with_cpu else []
            for values in series:
                mean, half = t_interval(values) if values else (math.nan, math.nan)
                cells += [
                    "" if math.isnan(mean) else repr(mean),
                    "" if math.isnan(half) else repr(half),
                ]
            lines.append(",".join(cells + ([_csv(row.config)] if with_config else [])))
        return "\n".join(lines)
    header = ["run", "seeds", *map(_heading, metrics), "train min"]
    header += ["CPU min"] if with_cpu else []
    header += ["config"] if with_config else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    approximate = False
    for row in rows:
        total = len(row.runs)
        cells = [row.label, "baseline" if row.baseline else str(total)]
        cells += [_cell(row.values(m), total) for m in metrics]
        train = _cell(row.times("train"), total, digits=1)
        if train and any(r.approximate_time for r in row.runs):
            train, approximate = f"~{train}", True
        cells.append(train)
        cells += [_cell(row.times("cpu"), total, digits=1)] if with_cpu else []
        cells += [row.config] if with_config else []
        lines.append("| " + " | ".join(cells) + " |")
    if approximate:
        lines.append("")
        lines.append("~: from metrics.jsonl's first to last training line (startup not counted).")
    return "\n".join(lines)


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def define_flags() -> None:
    """The command line's flags (defined only when this module runs as the program)."""
    flags.DEFINE_list("metrics", list(DEFAULT_METRICS), "Columns: test/<key> or valid/<key>.")
    flags.DEFINE_enum("format", "markdown", ["markdown", "csv"], "How the table is printed.")
    flags.DEFINE_bool("show_config", False, "Add a column: each row's config fields that differ "
                      "from the first row's.")  # fmt: skip


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise ValueError("name at least one RUN: a workdir or a directory of workdirs")
    for metric in FLAGS.metrics:
        check_metric(metric)
    runs = [load_run(path) for path in find_runs(argv[1:])]
    print(format_table(table_rows(runs, FLAGS.show_config), FLAGS.metrics, FLAGS.format))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
