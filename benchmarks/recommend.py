"""Serving speed of an exported model: latency, histories/s by batch size, the all-users job.

    python benchmarks/recommend.py                       # every section, ~15 min on 2 cores
    python benchmarks/recommend.py --sections=sweep,job
    python benchmarks/recommend.py --sections=memory     # 10k and 1M synthetic users

Exports a randomly initialised BERT4Rec of the ML-1m shape (3,416 items, max_len 200, hidden 64,
2 layers, 2 heads, FFN 256) to a temporary directory (`export.export_model`: no workdir, no data
set). Histories are synthetic with ML-1m-like lengths (log-normal around 100 items, cut to
20..2,000; the model reads the last 199, the exclusion reads them all). Sections:

  * latency: batch 1, p50 and p99 per call, and histories/s at --batch, for
    `Recommender.recommend` (raw ids), the jax.export function alone (dense ids) and the
    SavedModel's `serving_default` called from TensorFlow;
  * sweep: histories/s of `Recommender.run` for batch sizes 8..1,024 (what
    `recommend.DEFAULT_BATCH_SIZE` was chosen from);
  * job: the all-users job file to file (interactions Parquet in, recommendations Parquet out,
    `recommend.recommend_all`, the command line's code path) on --job_users users: users/s
    (the second of two passes: the first compiles) and the process's peak RSS;
  * memory: the same job in a fresh process for 10k and 1M synthetic users (30 items each on
    average, written by another process), printing each one's peak RSS. It uses a small model
    (1,000 items, max_len 20, hidden 16) so that 1M users finish in minutes: what it measures
    is the streaming, whose memory must not grow with the user count.
Prints numbers, never asserts them.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

# Runnable as a script from anywhere in the checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bert4rec_jax import export, models, recommend  # noqa: E402
from bert4rec_jax.export import artifact  # noqa: E402

BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)


def random_model(
    num_items: int,
    max_len: int,
    seed: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    ffn: int = 256,
) -> tuple[models.BERT4Rec, dict]:
    """A model of the given shape (default ML-1m's) with random parameters."""
    config = models.ModelConfig(
        vocab_size=num_items + 2,
        max_len=max_len,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=ffn,
    )
    model = models.BERT4Rec(config)
    ids = jnp.zeros((1, max_len), jnp.int32)
    init = jax.jit(lambda key: model.init(key, ids, jnp.zeros((1, 1), jnp.int32), train=False))
    return model, init(jax.random.key(seed))["params"]


def export_random(
    model: models.BERT4Rec,
    params: dict,
    output: pathlib.Path,
    top_k: int,
    saved_model: bool,
) -> dict:
    """Exports with sparse raw ids (raw = 7 x dense), as real catalogues have them."""
    num_items = model.config.vocab_size - 2
    vocabulary = np.concatenate([[-1], 7 * np.arange(1, num_items + 1)]).astype(np.int64)
    return export.export_model(
        model,
        params,
        vocabulary,
        output,
        top_k=min(top_k, num_items),
        saved_model=saved_model,
        platforms=["cpu"],
    )


def latency(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(p50, p99) seconds of `fn` over `calls` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def throughput(fn: Callable[[], object], rows: int, batches: int) -> float:
    """Rows per second of `fn` (one batch of `rows` per call) after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(batches):
        fn()
    return rows * batches / (time.perf_counter() - start)


def synthetic_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    """ML-1m-like history lengths: log-normal around 100, cut to 20..2,000."""
    return np.clip(rng.lognormal(np.log(100), 0.9, size=n), 20, 2000).astype(np.int64)


def write_interactions(
    path: pathlib.Path, users: int, num_items: int, seed: int, mean_length: float | None = None
) -> int:
    """A Parquet interactions table (user, item, timestamp) grouped by user, written 10k users
    at a time so that the writer's memory stays small too. Returns its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    rows = 0
    schema = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("timestamp", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, users, 10_000):
            n = min(10_000, users - start)
            if mean_length is None:
                lengths = synthetic_lengths(rng, n)
            else:
                lengths = rng.poisson(mean_length - 1, size=n) + 1
            user = np.repeat(np.arange(start, start + n), lengths)
            item = 7 * rng.integers(1, num_items + 1, size=len(user))  # raw ids of export_random
            stamps = np.arange(rows, rows + len(user))
            writer.write_table(pa.table({"user": user, "item": item, "timestamp": stamps}))
            rows += len(user)
    return rows


def run_job(
    rec: recommend.Recommender, source: pathlib.Path, out: pathlib.Path
) -> recommend.JobSummary:
    """The command line's all-users job, file to file, k=10."""
    writer = recommend.OutputWriter(str(out), rec.vocabulary.dtype)
    summary = recommend.recommend_all(rec, recommend.iter_interactions(source), writer, k=10)
    writer.close()
    return summary


def memory_child(users: int, tmp: pathlib.Path, phase: str) -> None:
    """One step of a memory run, in its own process, so that its peak RSS is the job's own.

    phase "prepare": export the small model (once) and write `users` synthetic users;
    phase "job": load the model and run the job, printing the peak RSS.
    """
    model_dir = tmp / "small_model"
    source = tmp / f"users{users}.parquet"
    if phase == "prepare":
        if not model_dir.exists():
            model, params = random_model(1000, 20, 0, hidden=16, layers=1, heads=2, ffn=32)
            export_random(model, params, model_dir, 100, saved_model=False)
        write_interactions(source, users, 1000, 0, mean_length=30)
        return
    rec = recommend.Recommender.load(model_dir)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    summary = run_job(rec, source, tmp / f"recs{users}.parquet")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"  {users:>9,} users: {summary.users / seconds:8,.0f} users/s (compiling included), "
        f"peak RSS {peak:,.0f} MiB (after loading the model: {before:,.0f} MiB)",
        flush=True,
    )


def latency_table(args: argparse.Namespace, output: pathlib.Path, rng: np.random.Generator) -> None:
    """Batch-1 latency and --batch throughput, three ways in, on full-window histories."""
    width = args.max_len - 1
    vocabulary = artifact.read_raw_ids(output / artifact.VOCABULARY)
    dense = rng.integers(1, args.num_items + 1, size=(args.batch, width), dtype=np.int32)
    raw = [vocabulary[row].tolist() for row in dense]  # the same histories as raw ids
    rec = recommend.Recommender.load(output, batch_size=args.batch)
    rows = {
        "Recommender.recommend (raw ids)": {
            n: (lambda h=raw[:n]: rec.recommend(h, k=args.k)) for n in (1, args.batch)
        },
        "jax.export function (dense ids)": {
            n: (lambda h=dense[:n]: rec.run(h)) for n in (1, args.batch)
        },
    }
    if not args.no_saved_model:
        import tensorflow as tf

        signature = tf.saved_model.load(str(output / artifact.SAVED_MODEL_DIR)).signatures[
            export.SIGNATURE
        ]

        def tf_call(h):
            out = signature(
                history=tf.constant(h),
                users=tf.zeros([len(h)], tf.int32),
                exclude_seen=tf.ones([len(h)], dtype=tf.bool),
            )
            return out[export.ITEM_IDS].numpy(), out[export.SCORES].numpy()

        rows["TF SavedModel (dense ids)"] = {
            n: (lambda h=dense[:n]: tf_call(h)) for n in (1, args.batch)
        }
    print(f"\nlatency: histories of {width} items")
    print(f"{'':34s} {'batch 1 p50':>12s} {'p99':>9s} {f'batch {args.batch}':>14s}")
    for name, fns in rows.items():
        p50, p99 = latency(fns[1], args.calls)
        rate = throughput(fns[args.batch], args.batch, args.batches)
        print(f"{name:34s} {p50 * 1e3:9.2f} ms {p99 * 1e3:6.2f} ms {rate:9.0f} hist/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="latency,sweep,job,memory")
    parser.add_argument("--num_items", type=int, default=3416)
    parser.add_argument("--max_len", type=int, default=200)
    parser.add_argument("--top_k", type=int, default=100, help="exported top_k")
    parser.add_argument("--k", type=int, default=10, help="items asked of Recommender.recommend")
    parser.add_argument("--calls", type=int, default=100, help="batch-1 calls timed")
    parser.add_argument("--batch", type=int, default=recommend.DEFAULT_BATCH_SIZE)
    parser.add_argument("--batches", type=int, default=5, help="--batch batches timed")
    parser.add_argument("--sweep_histories", type=int, default=2048)
    parser.add_argument("--batch_sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--job_users", type=int, default=10_000)
    parser.add_argument("--memory_users", default="10000,1000000")
    parser.add_argument("--no_saved_model", action="store_true", help="skip TensorFlow")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory_child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, pathlib.Path(args.tmp), args.phase)
        return
    sections = args.sections.split(",")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPUs, load {load}")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = pathlib.Path(tmp)
        output = tmp_path / "export"
        if set(sections) & {"latency", "sweep", "job"}:
            model, params = random_model(args.num_items, args.max_len, args.seed)
            saved_model = "latency" in sections and not args.no_saved_model
            manifest = export_random(model, params, output, args.top_k, saved_model)
            print(
                f"ML-1m shape: {args.num_items} items, max_len {args.max_len}, top_k "
                f"{manifest['top_k']}"
            )
        if "latency" in sections:
            latency_table(args, output, rng)
        if "sweep" in sections:
            lengths = synthetic_lengths(rng, args.sweep_histories)
            items = args.num_items + 1
            histories = [rng.integers(1, items, size=n, dtype=np.int32) for n in lengths]
            print(
                f"\nsweep: Recommender.run on {len(histories):,} whole histories (median "
                f"{int(np.median(lengths))} items, max {lengths.max()}), histories/s"
            )
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                rec = recommend.Recommender.load(output, batch_size=batch)
                rec.run(histories)  # compiles every shape the timed call meets
                start = time.perf_counter()
                rec.run(histories)
                rate = len(histories) / (time.perf_counter() - start)
                print(f"  batch {batch:>5}: {rate:8,.0f} histories/s", flush=True)
        if "job" in sections:
            source = tmp_path / "interactions.parquet"
            rows = write_interactions(source, args.job_users, args.num_items, args.seed)
            out = tmp_path / "recs.parquet"
            batch = recommend.DEFAULT_BATCH_SIZE
            rec = recommend.Recommender.load(output, batch_size=batch)
            run_job(rec, source, out)  # a first pass compiles every shape
            start = time.perf_counter()
            summary = run_job(rec, source, out)
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"\njob: Parquet -> Parquet, k=10, batch {batch}: {summary.users:,} users "
                f"({rows:,} rows) in {seconds:.1f} s = {summary.users / seconds:,.0f} users/s; "
                f"peak RSS of this process {peak:,.0f} MiB (the export and earlier sections "
                "included; --sections=memory measures the job alone)"
            )
        if "memory" in sections:
            print("\nmemory: the job on a small model, a fresh process per user count")
            for users in (int(u) for u in args.memory_users.split(",")):
                for phase in ("prepare", "job"):
                    subprocess.run(
                        [sys.executable, __file__, f"--memory_child={users}", f"--tmp={tmp}",
                         f"--phase={phase}"],
                        check=True,
                    )  # fmt: skip


if __name__ == "__main__":
    main()
