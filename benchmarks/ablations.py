"""The ablation tables of docs/results.md: each idea on top of a recipe, several seeds, test
reported once.

    python benchmarks/ablations.py --data=../shared/data --workroot=/tmp/ablations
    python benchmarks/ablations.py --data=../shared/data --workroot=/tmp/ablations \
        --rows=ml100k,ml100k-weight2 --seeds=0,1,2

Every (row, seed) is one `python -m bert4rec_jax.train` run in its own workdir
`<workroot>/<row>/seed<S>`, on the standard split: validation picks the checkpoint, test is
evaluated once for it (the trainer's `test_results.json`). A finished run is not repeated, so an
interrupted table resumes where it stopped and new rows can be added to an existing one.

Printed per row: validation pop100 NDCG@10 of the chosen checkpoint, test pop100 and full
NDCG@10 and HR@10, each as mean ± the half-width of a 95% Student-t interval over the seeds,
the training time (wall-clock from the command's start to the end of its last training step: data
loading, compilation and the validations included, the final test evaluation not) and the
command's CPU time (user + sys of every thread, test included), which other jobs on the cores
inflate far less than wall-clock.
`--out` also writes the per-seed numbers as CSV. Times depend on the machine and its load: the
docs/results.md names both for every table it shows.
"""

from __future__ import annotations

import argparse
import csv
import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

# name -> (config file, overrides). Every row starts from a config in configs/ and changes one
# thing, so the table reads as ablations of that config.
ROWS: dict[str, tuple[str, list[str]]] = {
    # MovieLens-100K: the first recipe (2,000 steps, d=64) and the current one.
    "ml100k-v1": ("configs/ml_100k_v1.py", []),
    "ml100k": ("configs/ml_100k.py", []),
    "ml100k-weight2": ("configs/ml_100k.py", ["--config.input.mask_last_weight=2"]),
    "ml100k-weight4": ("configs/ml_100k.py", ["--config.input.mask_last_weight=4"]),
    "ml100k-share0.25": ("configs/ml_100k.py", ["--config.input.mask_last_share=0.25"]),
    "ml100k-items": ("configs/ml_100k.py", ["--config.model.item_features=True"]),
    "ml100k-user-add": ("configs/ml_100k.py", ["--config.model.user_features=add"]),
    "ml100k-user-mask": ("configs/ml_100k.py", ["--config.model.user_features=mask"]),
    "ml100k-user-prefix": ("configs/ml_100k.py", ["--config.model.user_features=prefix"]),
    # SASRec as published (issue 31), each loss on configs/ml_100k_sasrec.py's recipe, nothing
    # else re-tuned: the full softmax (SASRec+), the original one-negative BCE, the sampled
    # softmax over 256 uniform negatives with logQ (SASRec+3000's kind) and gSASRec.
    "ml100k-sasrec": ("configs/ml_100k_sasrec.py", []),
    "ml100k-sasrec-bce": ("configs/ml_100k_sasrec.py", ["--config.loss.type=bce"]),
    "ml100k-sasrec-sampled": (
        "configs/ml_100k_sasrec.py",
        ["--config.loss.type=sampled_softmax", "--config.loss.num_negatives=256"],
    ),
    # The same with popularity-drawn negatives: uniform ones are rarely the popular items that
    # pop100's candidates are, and their logQ term is a constant (no correction at all).
    "ml100k-sasrec-sampled-pop": (
        "configs/ml_100k_sasrec.py",
        [
            "--config.loss.type=sampled_softmax",
            "--config.loss.num_negatives=256",
            "--config.loss.proposal=popularity",
        ],
    ),
    "ml100k-gsasrec": (
        "configs/ml_100k_sasrec.py",
        [
            "--config.loss.type=gbce",
            "--config.loss.num_negatives=256",
            "--config.loss.gbce_t=0.75",
            "--config.loss.gbce_shift=True",  # unshifted, it stays at the best constant score
        ],
    ),
    # A longer budget for BERT4Rec: three times the steps, the schedule stretched with it.
    "ml100k-x3": ("configs/ml_100k.py", ["--config.num_train_steps=3600"]),
}

# docs/results.md's table; the v1 and placement rows run on request (`--rows=...`, its
# placement comparison used `--seeds=0`).
TABLE_ROWS = (
    "ml100k",
    "ml100k-weight2",
    "ml100k-weight4",
    "ml100k-share0.25",
    "ml100k-items",
    "ml100k-user-add",
)

METRICS = (
    ("valid pop100 NDCG@10", "valid", "pop100/ndcg@10"),
    ("test pop100 NDCG@10", "test", "pop100/ndcg@10"),
    ("test full NDCG@10", "test", "full/ndcg@10"),
    ("test pop100 HR@10", "test", "pop100/hr@10"),
    ("test full HR@10", "test", "full/hr@10"),
)


def run_one(
    workdir: pathlib.Path, config: str, overrides: list[str], seed: int, data: str
) -> dict[str, float]:
    """Trains and tests one (row, seed) unless already done; returns its numbers."""
    run = common.train_run(
        workdir,
        config,
        [f"--config.manual_dir={data}", f"--config.seed={seed}", *overrides],
        "ablation_run.json",
    )
    if "test" not in run:  # a summary from before common.train_run: already in this shape
        return run
    test = run["test"]
    valid = [r for r in run["valid"] if r["step"] == test["step"] and "valid/pop100/ndcg@10" in r]
    return {
        "seed": seed,
        "step": test["step"],
        "train_seconds": run["train_seconds"],
        "cpu_seconds": run["cpu_seconds"],
        "valid/pop100/ndcg@10": valid[-1]["valid/pop100/ndcg@10"] if valid else math.nan,
        **{f"test/{k}": v for k, v in test.items() if "/" in k},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="directory holding ml-100k/ and beauty.txt")
    parser.add_argument("--workroot", default="/tmp/bert4rec_ablations")
    parser.add_argument("--rows", default=",".join(TABLE_ROWS), help=f"from {list(ROWS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="", help="CSV of every (row, seed)")
    args = parser.parse_args()
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {list(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    results: dict[str, list[dict[str, float]]] = {}
    for name in names:
        config, overrides = ROWS[name]
        results[name] = [
            run_one(
                pathlib.Path(args.workroot) / name / f"seed{seed}",
                config,
                overrides,
                seed,
                args.data,
            )
            for seed in seeds
        ]

    header = ["row", *(m[0] for m in METRICS), "train min", "CPU min"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, runs in results.items():
        cells = [name]
        for _, split, key in METRICS:
            mean, half = common.interval([r[f"{split}/{key}"] for r in runs])
            cells.append(f"{mean:.4f} ± {half:.4f}")
        mean, half = common.interval([r["train_seconds"] / 60 for r in runs])
        cells.append(f"{mean:.1f} ± {half:.1f}")
        # Runs from before the CPU clock existed have none: the mean is over those that do.
        cpu = [r["cpu_seconds"] / 60 for r in runs if "cpu_seconds" in r]
        if len(cpu) == len(runs):
            cells.append("{:.1f} ± {:.1f}".format(*common.interval(cpu)))
        else:
            mean = common.interval(cpu)[0] if cpu else math.nan
            cells.append(f"{mean:.1f} ({len(cpu)} of {len(runs)})" if cpu else "")
        print("| " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.writer(f)
            keys = sorted({k for runs in results.values() for r in runs for k in r})
            writer.writerow(["row", *keys])
            for name, runs in results.items():
                for r in runs:
                    writer.writerow([name, *(r.get(k, "") for k in keys)])


if __name__ == "__main__":
    main()
