"""Throughput of the training input pipeline: masked sequences per second per host core.

    python benchmarks/input_pipeline.py                       # Beauty + ML-1m-like, 1 and all cores
    python benchmarks/input_pipeline.py --beauty=/path/to/beauty.txt --batches=3000

Two workloads, each with its paper recipe (paper split, dupe_factor 10, one mask-last copy):
  beauty: the paper's beauty.txt (default ../shared/data/beauty.txt beside the checkout);
    max_len 50, mask_prob 0.6, 30 predictions, step 5.
  ml-1m-like: 6,040 random users of 20..310 random items (mean ~165) over 3,416 items;
    max_len 200, mask_prob 0.2, 40 predictions, step 100.

Each workload is measured in a child process pinned (sched_setaffinity) to 1 core with one tf.data
thread, then to every core with tf.data choosing its parallelism, and reports:
  setup: windows + the fixed masks of all copies, drawn once per run;
  epoch build: one whole epoch's rows built in numpy on one thread (what tf.data spreads over
    chunks), i.e. the cost the pipeline must hide;
  iteration: batches/s and sequences/s out of `as_numpy_iterator()`, after one warm-up batch,
    and sequences/s divided by the cores the process may use.
This prints numbers; it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BEAUTY = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty.txt"


def _beauty(path: pathlib.Path):
    import numpy as np

    from bert4rec_jax.datasets.corpus import corpus_from_sequences

    pairs = np.array(path.read_bytes().split(), dtype=np.int64).reshape(-1, 2)  # [n, (user, item)]
    users = pairs[:, 0]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    offsets = np.r_[starts, len(users)]
    return corpus_from_sequences("beauty", users[starts], offsets, pairs[:, 1])


def _ml1m_like(seed: int = 0):
    import numpy as np

    from bert4rec_jax.datasets.corpus import corpus_from_sequences

    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 311, size=6040)  # mean ~165, as ML-1m's 163.5
    offsets = np.r_[0, np.cumsum(lengths)]
    items = rng.integers(1, 3417, size=int(offsets[-1]))
    return corpus_from_sequences("ml-1m-like", np.arange(6040), offsets, items)


def _workload(name: str, beauty_path: pathlib.Path):
    from bert4rec_jax.cloze import InputConfig

    if name == "beauty":
        config = InputConfig(
            max_len=50, mask_prob=0.6, max_predictions=30, sliding_step=5, dupe_factor=10
        )
        return _beauty(beauty_path), config
    config = InputConfig(
        max_len=200, mask_prob=0.2, max_predictions=40, sliding_step=100, dupe_factor=10
    )
    return _ml1m_like(), config


def _measure(args) -> dict:
    """Runs in the pinned child: one workload, one thread setting."""
    from bert4rec_jax.datasets.corpus import leave_one_out
    from bert4rec_jax.input_pipeline import TrainingInstances

    corpus, config = _workload(args.workload, pathlib.Path(args.beauty))
    split = leave_one_out(corpus, "paper")
    t0 = time.perf_counter()
    instances = TrainingInstances(corpus, split, config)
    setup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = instances.epoch_arrays(0)
    epoch_s = time.perf_counter() - t0
    del rows

    ds = instances.dataset(args.batch_size, num_threads=1 if args.cores == 1 else None)
    it = ds.as_numpy_iterator()
    next(it)  # warm-up: graph tracing, first chunk, epoch order
    t0 = time.perf_counter()
    for _ in range(args.batches):
        batch = next(it)
    iter_s = time.perf_counter() - t0
    assert batch["ids"].shape == (args.batch_size, config.max_len)
    seqs = args.batches * args.batch_size
    return {
        "workload": args.workload,
        "cores": len(os.sched_getaffinity(0)),
        "windows": instances.num_windows,
        "instances": instances.num_instances,
        "setup_s": setup_s,
        "epoch_build_s": epoch_s,
        "epoch_build_seq_s": instances.num_instances / epoch_s,
        "batches_s": args.batches / iter_s,
        "seq_s": seqs / iter_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--beauty", default=str(BEAUTY), help="the paper's beauty.txt")
    parser.add_argument("--batch_size", type=int, default=256, help="global batch, one process")
    parser.add_argument("--batches", type=int, default=2000, help="batches timed per run")
    parser.add_argument("--workloads", default="beauty,ml-1m-like")
    parser.add_argument("--workload", help=argparse.SUPPRESS)  # child process
    parser.add_argument("--cores", type=int, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()

    if args.workload:  # child: pin first, before TensorFlow starts its thread pools
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
        print(json.dumps(_measure(args)))
        return

    all_cores = len(os.sched_getaffinity(0))
    print(f"host: {all_cores} cores usable; batch {args.batch_size}; {args.batches} batches timed")
    header = (
        f"{'workload':<12}{'cores':>6}{'windows':>9}{'instances':>11}{'setup s':>9}"
        f"{'epoch build s':>15}{'build seq/s':>13}{'batch/s':>9}{'seq/s':>10}{'seq/s/core':>12}"
    )
    print(header)
    for workload in args.workloads.split(","):
        for cores in sorted({1, all_cores}):
            cmd = [sys.executable, __file__, f"--workload={workload}", f"--cores={cores}"]
            cmd += [f"--beauty={args.beauty}", f"--batch_size={args.batch_size}"]
            cmd += [f"--batches={args.batches}"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{r['workload']:<12}{r['cores']:>6}{r['windows']:>9,}{r['instances']:>11,}"
                f"{r['setup_s']:>9.2f}{r['epoch_build_s']:>15.2f}{r['epoch_build_seq_s']:>13,.0f}"
                f"{r['batches_s']:>9.0f}{r['seq_s']:>10,.0f}{r['seq_s'] / r['cores']:>12,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
