"""Corpus preparation time and peak memory: Beauty and a synthetic ML-20M-sized file.

    python benchmarks/prepare_corpus.py                      # both workloads, both routes
    python benchmarks/prepare_corpus.py --beauty=/path/to/beauty.txt --skip_tfds
    python benchmarks/prepare_corpus.py --interactions=2000000 --users=14000   # a smaller big file

Workloads:
  beauty: the paper's beauty.txt (default ../shared/data/beauty.txt beside the checkout).
  big: a file in the paper's format with --interactions lines (default 20M), --users users (140k)
    and --items items (27k), written to a temporary directory first, untimed.

Routes, each timed in a fresh child process so that its peak RSS is its own:
  raw: file -> Corpus: read + validate + parse (`readers.read_paper_file`, which also checks that
    users are contiguous and sorts users by raw id), then `corpus_from_sequences` (item remap).
  tfds: `load_corpus` on an empty data dir with the file as the manual copy: the TFDS prepare
    (parse as above, serialise one example per user, write TFRecords), the read-back of the
    records, the corpus and the cache write. The big file goes in as `ml-20m.zip` (stored, not
    compressed), as the paper's ML-20m does.
Seconds exclude the interpreter start and imports. Peak RSS (VmHWM, else ru_maxrss) includes the
imported libraries (numpy alone ~30 MiB; TensorFlow ~600 MiB for the tfds route), shown as
`import_rss_mib`.
This prints numbers; it asserts nothing about speed.
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
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Runnable as a script from anywhere in the checkout (also as the timed child process).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

BEAUTY = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty.txt"


def _write_big_file(path: pathlib.Path, interactions: int, users: int, items: int) -> None:
    """Writes `<user> <item>` lines, users contiguous, without a Python loop per line."""
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = rng.multinomial(interactions - 5 * users, np.full(users, 1 / users)) + 5  # >= 5
    user_ids = np.repeat(np.arange(1, users + 1), lengths)
    item_ids = rng.integers(1, items + 1, size=interactions)
    with open(path, "wb") as f:
        for start in range(0, interactions, 2_000_000):
            block = np.stack(
                [user_ids[start : start + 2_000_000], item_ids[start : start + 2_000_000]], axis=1
            )
            f.write(_format_lines(block))


def _format_lines(table):
    """int64 [n, 2] -> b"u i\\n" * n: digits in a fixed-width byte grid, blanks squeezed out."""
    import numpy as np

    width = 10  # digits per number; enough for the ids here
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)  # [width]
    digits = (table[:, :, None] // powers) % 10  # [n, 2, width]
    significant = (table[:, :, None] // powers) > 0
    significant[:, :, -1] = True  # "0" keeps its one digit
    grid = np.zeros((len(table), 2, width + 1), dtype=np.uint8)  # number + separator
    grid[:, :, :width] = np.where(significant, digits + ord("0"), 0)
    grid[:, 0, width] = ord(" ")
    grid[:, 1, width] = ord("\n")
    flat = grid.reshape(-1)
    return flat[flat != 0].tobytes()


def _child(route: str, path: str, data_dir: str) -> None:
    """Runs one timed route and prints a JSON line (executed in a fresh process)."""
    import numpy as np  # noqa: F401 - counted in import_rss

    from bert4rec_jax.datasets import corpus as corpus_lib
    from bert4rec_jax.datasets import readers

    if route == "tfds":
        from absl import logging

        from bert4rec_jax.datasets import loading

        logging.set_verbosity(logging.WARNING)
    import_rss = common.peak_rss_mib()
    start = time.perf_counter()
    if route == "raw":
        seqs = readers.read_paper_file(path)
        parsed = time.perf_counter()
        corpus = corpus_lib.corpus_from_sequences(
            "bench", seqs.raw_user_ids, seqs.offsets, seqs.raw_items
        )
        stages = {
            "parse_s": round(parsed - start, 2),
            "remap_s": round(time.perf_counter() - parsed, 2),
        }
    else:
        name = "beauty" if path.endswith("beauty.txt") else "ml-20m"
        corpus = loading.load_corpus(name, data_dir=data_dir, manual_dir=os.path.dirname(path))
        stages = {}
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "route": route,
                "seconds": round(seconds, 2),
                **stages,
                "peak_rss_mib": round(common.peak_rss_mib()),
                "import_rss_mib": round(import_rss),
                "users": corpus.num_users,
                "items": corpus.num_items,
                "interactions": corpus.num_interactions,
            }
        )
    )


def _run(route: str, path: pathlib.Path, workdir: pathlib.Path) -> dict:
    data_dir = tempfile.mkdtemp(dir=workdir, prefix=f"data-{route}-")
    out = subprocess.run(
        [sys.executable, __file__, "--_child", route, str(path), data_dir],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beauty", type=pathlib.Path, default=BEAUTY)
    parser.add_argument("--interactions", type=int, default=20_000_000)
    parser.add_argument("--users", type=int, default=140_000)
    parser.add_argument("--items", type=int, default=27_000)
    parser.add_argument("--skip_tfds", action="store_true", help="time only the raw route")
    parser.add_argument("--skip_big", action="store_true", help="time only Beauty")
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        _child(*args._child)
        return

    routes = ["raw"] if args.skip_tfds else ["raw", "tfds"]
    print(f"cores available: {len(os.sched_getaffinity(0))}")
    with tempfile.TemporaryDirectory(prefix="prepare_corpus-") as tmp:
        workdir = pathlib.Path(tmp)
        if not args.beauty.is_file():
            sys.exit(f"Beauty not found at {args.beauty}; pass --beauty")
        manual = workdir / "beauty"
        manual.mkdir()
        os.symlink(args.beauty.resolve(), manual / "beauty.txt")
        for route in routes:
            print("beauty", json.dumps(_run(route, manual / "beauty.txt", workdir)), flush=True)
        if args.skip_big:
            return
        big = workdir / "big" / "ml-20m.txt"
        big.parent.mkdir()
        start = time.perf_counter()
        _write_big_file(big, args.interactions, args.users, args.items)
        print(
            f"big file written (untimed): {big.stat().st_size / 2**20:.0f} MiB, "
            f"{args.interactions} lines in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        print("big", json.dumps(_run("raw", big, workdir)), flush=True)
        if "tfds" in routes:
            archive = big.with_suffix(".zip")
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
                z.write(big, big.name)
            big.unlink()
            print("big", json.dumps(_run("tfds", archive, workdir)), flush=True)


if __name__ == "__main__":
    main()
