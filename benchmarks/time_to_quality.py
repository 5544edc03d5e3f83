"""Validation NDCG@10 against wall-clock seconds: how fast a config reaches its quality.

    python benchmarks/time_to_quality.py --config=configs/ml_100k.py --workdir=/tmp/ttq \
        --config.manual_dir=../shared/data --config.eval.every_steps=100
    python benchmarks/time_to_quality.py --config=configs/beauty.py --workdir=/tmp/ttq_beauty \
        --config.manual_dir=DATA --config.split_mode=standard --config.input.pipeline=device

Trains in this process (a fresh workdir; an existing one is refused so the clock starts at zero),
validating every `eval.every_steps`; then prints a table of (step, seconds since the start of the
command, validation metric) and writes `<workdir>/time_to_quality.csv` and, when matplotlib is
installed, `<workdir>/time_to_quality.png`. The seconds include data loading, compilation and the
validations themselves: the time a user waits. Several runs can be drawn on one plot with
`--compare=WORKDIR,...` (their CSV files). `--redraw` trains nothing: it rebuilds the CSV and the
plot of an existing run from its metrics.jsonl and the start time the script saved in
`<workdir>/time_to_quality.json`, e.g. for a run stopped before its last step.
"""

import time

START = time.time()  # the clock a user sees starts with the command, imports included

import csv  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A new directory for the run.")
flags.DEFINE_string("metric", "pop100/ndcg@10", "The validation metric to follow.")
flags.DEFINE_list("compare", [], "Other workdirs of this script to draw on the same plot.")
flags.DEFINE_string("label", "", "This run's name in the plot (default: the config file).")
flags.DEFINE_bool("redraw", False, "Train nothing: redraw an existing run of this script.")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["workdir"])

START_FILE = "time_to_quality.json"  # {"start": seconds since the epoch, "label": ...}


def curve(workdir: pathlib.Path, start: float, metric: str) -> list[tuple[int, float, float]]:
    """(step, seconds since start, validation metric) of every validation in metrics.jsonl."""
    from bert4rec_jax import workdir as workdir_lib

    path = workdir / workdir_lib.METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    key = f"valid/{metric}"
    return [(r["step"], r["time"] - start, r[key]) for r in rows if key in r]


def plot(runs: dict[str, list[tuple[int, float, float]]], metric: str, path: pathlib.Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in runs.items():
        ax.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=label)
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str]) -> None:
    del argv
    from bert4rec_jax import train_lib
    from bert4rec_jax.metric_writer import quiet_library_logs

    quiet_library_logs()
    workdir = pathlib.Path(FLAGS.workdir)
    if FLAGS.redraw:
        saved = json.loads((workdir / START_FILE).read_text())
        start, label = saved["start"], FLAGS.label or saved["label"]
    else:
        if FLAGS.config is None:
            raise app.UsageError("--config is required (or --redraw an existing run)")
        if workdir.exists() and any(workdir.iterdir()):
            raise app.UsageError(f"{workdir} is not empty: time to quality needs a fresh run")
        start = START
        label = FLAGS.label or pathlib.Path(config_flags.get_config_filename(FLAGS["config"])).stem
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / START_FILE).write_text(json.dumps({"start": start, "label": label}))
        train_lib.train_and_evaluate(FLAGS.config, str(workdir))
    points = curve(workdir, start, FLAGS.metric)
    with open(workdir / "time_to_quality.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "seconds", FLAGS.metric])
        writer.writerows(points)
    print(f"{'step':>8} {'seconds':>9} {FLAGS.metric:>16}")
    for step, seconds, value in points:
        print(f"{step:>8} {seconds:>9.1f} {value:>16.4f}")
    runs = {label: points}
    for other in map(pathlib.Path, FLAGS.compare):
        with open(other / "time_to_quality.csv") as f:
            rows = list(csv.reader(f))[1:]
        saved = other / START_FILE
        name = json.loads(saved.read_text())["label"] if saved.exists() else other.name
        runs[name] = [(int(a), float(b), float(c)) for a, b, c in rows]
    png = workdir / "time_to_quality.png"
    print(
        f"wrote {workdir / 'time_to_quality.csv'}"
        + (f" and {png}" if plot(runs, FLAGS.metric, png) else " (no matplotlib: no plot)")
    )


if __name__ == "__main__":
    app.run(main)
