"""Your own data in: time and peak memory from an interaction file to a `Corpus`, CSV vs Parquet.

    python benchmarks/ingest.py                     # 20M rows shaped like MovieLens-20M
    python benchmarks/ingest.py --rows=2000000      # a smaller run

Workload: --rows interactions (default 20M) of --users users (138,493) and --items items (26,744),
like MovieLens-20M's ratings.csv: integer user ids, string item ids like "tt0114709", a rating and
unix-second timestamps; every user has >= 20 rows, item popularity is skewed (Zipf-like), rows are
grouped by user and sorted by item within a user (as GroupLens ships them), so timestamps are not in
order. Written once, untimed, as CSV (header userId,movieId,rating,timestamp) and as Parquet (item
ids dictionary-encoded, the library's default row groups) into a temporary directory.

Routes, each timed in a fresh child process so that its peak RSS is its own:
  read: `interactions.read_sequences` + `corpus_from_sequences`: parse, encode ids, sort by (user,
    time), filter, remap items; the raw file -> Corpus work without TFDS.
  load: `load_corpus("file", ...)` on an empty data dir: the one path every data set takes (content
    hash, the above inside the TFDS builder, records written and read back, the cache written).
  hit: `load_corpus` again on that data dir: hash the file, read the cached corpus.
Seconds (wall) exclude the interpreter start and imports; CPU seconds (user + system, all threads)
stay comparable when other jobs share the cores. Peak RSS (VmHWM) includes the imported libraries
(TensorFlow ~600 MiB for load/hit; `import_rss_mib`). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Runnable as a script from anywhere in the checkout (also as the timed child process).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

FILE_OPTIONS = {
    "user_column": "userId",
    "item_column": "movieId",
    "timestamp_column": "timestamp",
}


def _cpu_seconds() -> float:
    """User + system CPU time of this process: comparable when other jobs share the cores."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _make_table(rows: int, users: int, items: int):
    """The synthetic ratings as a pyarrow table (see the module docstring)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    minimum = 20
    if rows < minimum * users:
        raise SystemExit(f"--rows must be >= 20 * --users ({minimum * users})")
    weights = rng.lognormal(0.0, 1.0, size=users)  # a long tail of heavy users
    lengths = rng.multinomial(rows - minimum * users, weights / weights.sum()) + minimum
    user = np.repeat(np.arange(1, users + 1, dtype=np.int64), lengths)  # [rows], grouped
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    item = rng.choice(items, size=rows, p=popularity / popularity.sum()).astype(np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # Each user's ratings in time order: a start date and random gaps...
    first = rng.integers(800_000_000, 1_400_000_000, size=users)
    gaps = rng.exponential(50_000.0, size=rows).astype(np.int64)
    time_in_user = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts] - gaps[starts], lengths)
    timestamp = np.repeat(first, lengths) + time_in_user
    # ...but listed by item within each user, as GroupLens lists them.
    order = np.lexsort((item, user))
    item, timestamp = item[order], timestamp[order]
    names = np.sort(rng.choice(10_000_000, size=items, replace=False))
    dictionary = pa.array([f"tt{n:07d}" for n in names])
    rating = (rng.integers(1, 11, size=rows) / 2).astype(np.float64)
    return pa.table(
        {
            "userId": user,
            "movieId": pa.DictionaryArray.from_arrays(pa.array(item), dictionary),
            "rating": rating,
            "timestamp": timestamp,
        }
    )


def _write_files(workdir: pathlib.Path, rows: int, users: int, items: int) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    start = time.perf_counter()
    table = _make_table(rows, users, items)
    paths = {"csv": workdir / "ratings.csv", "parquet": workdir / "ratings.parquet"}
    pq.write_table(table, paths["parquet"])
    plain = table.set_column(1, "movieId", table["movieId"].cast(pa.string()))
    pacsv.write_csv(plain, paths["csv"], pacsv.WriteOptions(quoting_style="none"))
    for fmt, path in paths.items():
        print(f"{fmt}: {path.stat().st_size / 2**20:.0f} MiB", flush=True)
    print(f"files written (untimed) in {time.perf_counter() - start:.1f} s", flush=True)
    return {fmt: str(path) for fmt, path in paths.items()}


def _child(route: str, path: str, data_dir: str) -> None:
    """Runs one timed route and prints a JSON line (in a fresh process)."""
    from absl import logging

    from bert4rec_jax.datasets import corpus as corpus_lib
    from bert4rec_jax.datasets import file_options, interactions

    if route != "read":  # TensorFlow only where it is used
        from bert4rec_jax.datasets import loading
    logging.set_verbosity(logging.WARNING)
    file = {"path": path, **FILE_OPTIONS}
    import_rss = common.peak_rss_mib()
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if route == "read":
        encoded = interactions.read_sequences(file_options.FileOptions.from_mapping(file))
        seqs = encoded.sequences
        corpus = corpus_lib.corpus_from_sequences(
            "bench",
            encoded.user_ids[seqs.raw_user_ids],
            seqs.offsets,
            seqs.raw_items,
            item_vocab=encoded.item_ids,
        )
    else:
        corpus = loading.load_corpus("file", data_dir=data_dir, file=file)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                "cpu_seconds": round(_cpu_seconds() - cpu_start, 2),
                "peak_rss_mib": round(common.peak_rss_mib()),
                "import_rss_mib": round(import_rss),
                "users": corpus.num_users,
                "items": corpus.num_items,
                "interactions": corpus.num_interactions,
                "item_id_example": str(corpus.raw_item_ids[1]),
            }
        )
    )


def _run(route: str, path: str, data_dir: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--_child", route, path, data_dir],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        sys.exit(f"{route} on {path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--users", type=int, default=138_493)
    parser.add_argument("--items", type=int, default=26_744)
    parser.add_argument("--routes", default="read,load,hit", help="comma-separated")
    parser.add_argument("--formats", default="csv,parquet", help="comma-separated")
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        _child(*args._child)
        return

    print(f"cores available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.1f}")
    routes = args.routes.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        workdir = pathlib.Path(tmp)
        paths = _write_files(workdir, args.rows, args.users, args.items)
        for fmt in args.formats.split(","):
            data_dir = str(workdir / f"data-{fmt}")
            for route in routes:
                result = _run(route, paths[fmt], data_dir)
                results.append((fmt, route, result))
                print(fmt, route, json.dumps(result), flush=True)
    print(f"\n{args.rows:,} rows, {args.users:,} users, {args.items:,} items")
    print(
        "| format | route | seconds | CPU seconds | peak RSS (MiB) | users | items | interactions |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for fmt, route, r in results:
        print(
            f"| {fmt} | {route} | {r['seconds']} | {r['cpu_seconds']} | {r['peak_rss_mib']} | "
            f"{r['users']:,} | {r['items']:,} | {r['interactions']:,} |"
        )


if __name__ == "__main__":
    main()
