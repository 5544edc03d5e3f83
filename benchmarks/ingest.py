"""Your own data in, at scale: time, peak memory and output size from a log to a corpus.

    python benchmarks/ingest.py                     # 20M rows, one file, CSV and Parquet
    python benchmarks/ingest.py --rows=2000000      # a smaller run
    python benchmarks/ingest.py --rows=200000000 --parts=64 --formats=parquet \\
        --data_dir=/work/ingest_data --routes=read,load   # a pod-sized log as part files
    python benchmarks/ingest.py --rows=20000000 --parts=64 --single \\
        --data_dir=/work/ingest_data --baseline=/tmp/main # and one file, also read by another
                                                          # checkout (e.g. main's worktree)

Workload (`write_log`): --rows interactions of --users users (default rows / 145, as
MovieLens-20M) and --items items (rows / 750), written as --parts part files of an export: the
parts spread over --dates hive partitions (`date=2026-11-24/part-00017.parquet`, the date only
in the path, as Spark and BigQuery write it). Heavy-tailed user lengths (Pareto weights, so a
few users have 10^4-10^5 rows), power-law item popularity (Zipf, exponent 1), every user's rows
scattered over all parts in no time order, unix-second timestamps within each part's day (so
some interactions tie, and a few are exact duplicates); --ids=int (user 1..U, item ids
permuted) or str ("u00012345", "i0001234", dictionary-encoded in Parquet). Extra column:
`event` (view / cart / buy). --parts=1 writes one file instead; --single writes the same rows
as one file too, in the parts' order, for the single-file path. Written once, untimed, into
--data_dir (reused when the same log is asked for again; default a temporary directory).

Routes, each timed in a fresh child process so that its peak RSS is its own:
  read: `interactions.read_sequences` + `corpus_from_sequences`: the raw log -> Corpus work,
    without TFDS.
  load: `load_corpus("file", ...)` on an empty data dir: the one path every data set takes (content
    key, the above inside the TFDS builder, records written and read back, the cache written).
  hit: `load_corpus` again on that data dir: the content key (hashing every part) and the cache.
  key: the content key alone (`file_options.source_key`: every part's name, size and hash).
Seconds (wall) exclude the interpreter start and imports; CPU seconds (user + system, all threads)
stay comparable when other jobs share the cores. Peak RSS (VmHWM) includes the imported libraries
(TensorFlow ~600 MiB for load/hit; `import_rss_mib`). Output size: the corpus's arrays (read),
the corpus cache file and the TFDS records (load). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Runnable as a script from anywhere in the checkout (also as the timed child process).
sys.path.insert(0, str(_ROOT))

from benchmarks import common  # noqa: E402

FILE_OPTIONS = {"user_column": "user_id", "item_column": "item_id", "timestamp_column": "ts"}
_DAY = 86_400
_FIRST_DAY = 1_795_478_400  # 2026-11-24 00:00 UTC


def _cpu_seconds() -> float:
    """User + system CPU time of this process: comparable when other jobs share the cores."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _part_table(spec: dict, part: int, user_cdf, item_cdf, item_ids):
    """Part `part` of the log: its rows as a pyarrow table (the date is in its path)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng([spec["seed"], part])
    rows = spec["rows"] // spec["parts"] + (part < spec["rows"] % spec["parts"])
    user = np.searchsorted(user_cdf, rng.random(rows), side="right")
    item = item_ids[np.searchsorted(item_cdf, rng.random(rows), side="right")]
    day = part * spec["dates"] // spec["parts"]
    ts = _FIRST_DAY + day * _DAY + rng.integers(0, _DAY, rows)
    event = pa.DictionaryArray.from_arrays(
        rng.choice(3, size=rows, p=[0.85, 0.1, 0.05]).astype(np.int8),
        pa.array(["view", "cart", "buy"]),
    )
    if spec["ids"] == "str":
        users = pa.DictionaryArray.from_arrays(
            pa.array(user.astype(np.int32)),
            pa.array([f"u{u:08d}" for u in range(spec["users"])]),
        )
        items = pa.DictionaryArray.from_arrays(
            pa.array(item.astype(np.int32)),
            pa.array([f"i{i:07d}" for i in range(spec["items"])]),
        )
    else:
        users, items = pa.array(user + 1), pa.array(item + 1)
    return pa.table({"user_id": users, "item_id": items, "event": event, "ts": ts})


def write_log(spec: dict, where: pathlib.Path) -> dict[str, str]:
    """Writes the log of `spec` under `where` (once: reused when `spec.json` matches).

    Returns:
      "log": the directory of parts (or the file, with one part); "single": the one-file copy
      (with --single).
    """
    import numpy as np
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fmt = spec["format"]
    single = where / f"log.{fmt}"
    log = where / "parts" if spec["parts"] > 1 else single
    paths = {"log": str(log)}
    if spec["single"] and spec["parts"] > 1:
        paths["single"] = str(single)
    stamp = where / "spec.json"
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return paths
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    start = time.perf_counter()
    rng = np.random.default_rng(spec["seed"])
    weights = rng.pareto(1.5, spec["users"]) + 1.0  # heavy tail: a few users with very many
    user_cdf = np.cumsum(weights / weights.sum())
    popularity = 1.0 / np.arange(1, spec["items"] + 1)  # Zipf, exponent 1
    item_cdf = np.cumsum(popularity / popularity.sum())
    item_ids = rng.permutation(spec["items"])  # popularity unrelated to the id
    single_writer = None
    for part in range(spec["parts"]):
        table = _part_table(spec, part, user_cdf, item_cdf, item_ids)
        targets = []
        if spec["parts"] > 1:
            day = part * spec["dates"] // spec["parts"]
            date = time.strftime("%Y-%m-%d", time.gmtime(_FIRST_DAY + day * _DAY))
            targets.append(log / f"date={date}" / f"part-{part:05d}.{fmt}")
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "parquet":
                pq.write_table(table, target)
            else:
                pacsv.write_csv(table, target, pacsv.WriteOptions(quoting_style="none"))
        if "single" in paths or spec["parts"] == 1:
            if single_writer is None:
                single_writer = (
                    pq.ParquetWriter(single, table.schema)
                    if fmt == "parquet"
                    else pacsv.CSVWriter(
                        single, table.schema, write_options=pacsv.WriteOptions(quoting_style="none")
                    )
                )
            single_writer.write_table(table)
        print(f"  part {part + 1}/{spec['parts']} written", end="\r", flush=True)
    if single_writer is not None:
        single_writer.close()
    stamp.write_text(json.dumps(spec))
    for kind, path in paths.items():
        size = sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())
        size = size or pathlib.Path(path).stat().st_size
        print(f"{kind} ({fmt}): {path}, {size / 2**20:,.0f} MiB", flush=True)
    print(f"written (untimed) in {time.perf_counter() - start:.0f} s", flush=True)
    return paths


def _child(route: str, path: str, data_dir: str, checkout: str) -> None:
    """Runs one timed route and prints a JSON line (in a fresh process)."""
    # The reader under test, this checkout or --baseline's: first on the path, imported below.
    sys.path.insert(0, checkout)
    from absl import logging

    from bert4rec_jax.datasets import corpus as corpus_lib
    from bert4rec_jax.datasets import file_options, interactions

    if route in ("load", "hit"):  # TensorFlow only where it is used
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
        output = corpus.items.nbytes + corpus.offsets.nbytes
    elif route == "key":
        options = file_options.FileOptions.from_mapping(file)
        key = file_options.source_key(options)
        seconds = time.perf_counter() - start
        usage = _usage(import_rss, cpu_start)
        print(json.dumps({"seconds": round(seconds, 2), "key": key, **usage}))
        return
    else:
        corpus = loading.load_corpus("file", data_dir=data_dir, file=file)
        cache = loading.corpus_cache_path("file", data_dir=data_dir, file=file)
        records = [p for p in pathlib.Path(data_dir).rglob("*tfrecord*") if p.is_file()]
        output = cache.stat().length + sum(p.stat().st_size for p in records)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": round(seconds, 2),
                **_usage(import_rss, cpu_start),
                "output_mib": round(output / 2**20),
                "users": corpus.num_users,
                "items": corpus.num_items,
                "interactions": corpus.num_interactions,
            }
        )
    )


def _usage(import_rss: float, cpu_start: float) -> dict:
    return {
        "cpu_seconds": round(_cpu_seconds() - cpu_start, 2),
        "peak_rss_mib": round(common.peak_rss_mib()),
        "import_rss_mib": round(import_rss),
    }


def _run(route: str, path: str, data_dir: str, checkout: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--_child", route, path, data_dir, checkout],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        sys.exit(f"{route} on {path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--users", type=int, default=0, help="0 = rows / 145")
    parser.add_argument("--items", type=int, default=0, help="0 = rows / 750")
    parser.add_argument("--parts", type=int, default=1, help="part files; 1 = one file")
    parser.add_argument("--dates", type=int, default=4, help="hive partitions of the parts")
    parser.add_argument("--ids", choices=("int", "str"), default="int")
    parser.add_argument("--single", action="store_true", help="also write the rows as one file")
    parser.add_argument("--formats", default="csv,parquet", help="comma-separated")
    parser.add_argument("--routes", default="read,load,hit", help="comma-separated")
    parser.add_argument("--data_dir", default="", help="where the logs stay; '' = temporary")
    parser.add_argument("--baseline", default="", help="another checkout to time on one file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        _child(*args._child)
        return

    print(f"cores available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.1f}")
    users = args.users or args.rows // 145
    items = args.items or args.rows // 750
    routes = args.routes.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        root = pathlib.Path(args.data_dir or tmp)
        for fmt in args.formats.split(","):
            spec = dict(
                rows=args.rows,
                users=users,
                items=items,
                parts=args.parts,
                dates=args.dates,
                ids=args.ids,
                format=fmt,
                single=args.single,
                seed=args.seed,
            )
            name = f"{args.rows // 1_000_000}M-{args.parts}p-{args.ids}-{fmt}"
            paths = write_log(spec, root / name)
            runs = [(what, path, str(_ROOT)) for what, path in paths.items()]
            if args.baseline and "single" in paths:
                runs.append(("single, baseline", paths["single"], args.baseline))
            elif args.baseline and args.parts == 1:
                runs.append(("log, baseline", paths["log"], args.baseline))
            for what, path, checkout in runs:
                data_dir = pathlib.Path(tmp) / f"tfds-{name}-{len(results)}"
                for route in routes:
                    result = _run(route, path, str(data_dir), checkout)
                    result["load_average"] = round(os.getloadavg()[0], 1)
                    results.append((fmt, what, route, result))
                    print(fmt, what, route, json.dumps(result), flush=True)
                shutil.rmtree(data_dir, ignore_errors=True)
    print(
        f"\n{args.rows:,} rows, {args.parts} parts, {users:,} users, {items:,} items, "
        f"{args.ids} ids"
    )
    print(
        "| format | input | route | seconds | rows/s | CPU seconds | peak RSS (MiB) | "
        "output (MiB) | users | items | interactions | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for fmt, what, route, r in results:
        counts = [
            f"{r[k]:,}" if k in r else "" for k in ("output_mib", "users", "items", "interactions")
        ]
        print(
            f"| {fmt} | {what} | {route} | {r['seconds']} | {args.rows / r['seconds']:,.0f} | "
            f"{r['cpu_seconds']} | {r['peak_rss_mib']:,} | {' | '.join(counts)} | "
            f"{r['load_average']} |"
        )


if __name__ == "__main__":
    main()
