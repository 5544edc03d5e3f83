"""Recommendation latency and throughput of an exported model: jax.export and the TF SavedModel.

    python benchmarks/recommend.py
    python benchmarks/recommend.py --calls=500 --batch=256 --no_saved_model

Exports a randomly initialised BERT4Rec of the ML-1m shape (3,416 items, max_len 200, hidden 64,
2 layers, 2 heads, FFN 256) to a temporary directory (`export.export_model`: no workdir, no data
set), then times, on full-length histories (199 items; the model computes all 200 positions
whatever the history's length):

  * batch 1: per-call latency, p50 and p99 over --calls calls, after a warm-up call;
  * batch --batch: histories/s over --batches calls.

Three ways in: `Recommender.recommend` (raw ids in, raw ids and scores out: the vocabulary mapping,
batching and the exported function), the exported function alone (dense ids, device arrays), and
the SavedModel's `serving_default` signature called from TensorFlow (dense ids). Prints numbers,
never asserts them.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable

# Runnable as a script from anywhere in the checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bert4rec_jax import artifact, export, models, recommend  # noqa: E402


def random_model(num_items: int, max_len: int, seed: int) -> tuple[models.BERT4Rec, dict]:
    """The ML-1m-shaped model with random parameters."""
    config = models.ModelConfig(
        vocab_size=num_items + 2,
        max_len=max_len,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=256,
    )
    model = models.BERT4Rec(config)
    ids = jnp.zeros((1, max_len), jnp.int32)
    init = jax.jit(lambda key: model.init(key, ids, jnp.zeros((1, 1), jnp.int32), train=False))
    return model, init(jax.random.key(seed))["params"]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_items", type=int, default=3416)
    parser.add_argument("--max_len", type=int, default=200)
    parser.add_argument("--top_k", type=int, default=100, help="exported top_k")
    parser.add_argument("--k", type=int, default=10, help="items asked of Recommender.recommend")
    parser.add_argument("--calls", type=int, default=200, help="batch-1 calls timed")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=5, help="large batches timed")
    parser.add_argument("--no_saved_model", action="store_true", help="skip TensorFlow")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    model, params = random_model(args.num_items, args.max_len, args.seed)
    rng = np.random.default_rng(args.seed)
    # Sparse raw ids, as real catalogues have them: the mapping is not the identity.
    raw_ids = np.sort(rng.choice(10 * args.num_items, size=args.num_items, replace=False))
    vocabulary = np.concatenate([[-1], raw_ids]).astype(np.int64)
    width = args.max_len - 1
    dense = rng.integers(1, args.num_items + 1, size=(args.batch, width), dtype=np.int32)
    raw = [vocabulary[row].tolist() for row in dense]  # the same histories as raw ids

    with tempfile.TemporaryDirectory() as tmp:
        output = pathlib.Path(tmp) / "export"
        start = time.perf_counter()
        manifest = export.export_model(
            model,
            params,
            vocabulary,
            output,
            top_k=args.top_k,
            saved_model=not args.no_saved_model,
        )
        sizes = {name: e["bytes"] for name, e in manifest["files"].items()}
        print(
            f"export: {time.perf_counter() - start:.1f} s; {artifact.SERVING_FN} "
            f"{sizes[artifact.SERVING_FN] / 1e3:.0f} KB, parameters "
            f"{sum(sizes[n] for n in artifact.PARAMETER_FILES) / 1e6:.1f} MB, all files "
            f"{sum(sizes.values()) / 1e6:.1f} MB"
        )
        start = time.perf_counter()
        rec = recommend.Recommender.load(output, batch_size=args.batch)
        print(f"Recommender.load (checksums, deserialise): {time.perf_counter() - start:.2f} s")

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
                    history=tf.constant(h), exclude_seen=tf.ones([len(h)], dtype=tf.bool)
                )
                return out[export.ITEM_IDS].numpy(), out[export.SCORES].numpy()

            rows["TF SavedModel (dense ids)"] = {
                n: (lambda h=dense[:n]: tf_call(h)) for n in (1, args.batch)
            }

        print(
            f"\n{args.num_items} items, max_len {args.max_len}, histories of {width} items, "
            f"top_k {manifest['top_k']}"
        )
        print(f"{'':34s} {'batch 1 p50':>12s} {'p99':>9s} {f'batch {args.batch}':>14s}")
        for name, fns in rows.items():
            p50, p99 = latency(fns[1], args.calls)
            rate = throughput(fns[args.batch], args.batch, args.batches)
            print(f"{name:34s} {p50 * 1e3:9.2f} ms {p99 * 1e3:6.2f} ms {rate:9.0f} hist/s")


if __name__ == "__main__":
    main()
