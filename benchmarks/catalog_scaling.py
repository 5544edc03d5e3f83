"""Train-step time and peak memory against the catalogue size, for each way of computing the loss.

    python benchmarks/catalog_scaling.py                       # ML-1m shape, 3.4k .. 10M items
    python benchmarks/catalog_scaling.py --shape=beauty --sizes=54542 --variants=full,chunked
    python benchmarks/catalog_scaling.py --sizes=1M --variants=chunked --steps=2 --mem_gib=24
    python benchmarks/catalog_scaling.py --sizes=1M --variants=chunked --model_axis=8  # 8 devices

For every (catalogue size, variant) it runs the full training step of bert4rec_jax.train_step
(forward, backward, clip + AdamW, dropout on) on a synthetic batch and prints ms/step and the
peak memory: the device's `memory_stats()["peak_bytes_in_use"]` where the backend reports it
(GPU, TPU), else the process's peak resident set (CPU). Each cell runs in a fresh subprocess, so
every peak is that cell's own. The variants are the `config.loss.type`s:

  full             materialised [batch, predictions, items] float32 logits
  chunked          exact softmax streamed over --chunk_size items at a time
  sampled_softmax  --num_negatives uniform negatives with the logQ correction
  gbce             gSASRec's gBCE over the same negatives

A cell whose estimated memory (4x the full variant's logits, or the parameters' and AdamW's
O(items * hidden) arrays) exceeds --mem_gib is not run and prints "does not fit".

--model_axis=M splits the item table, the output bias and their AdamW moments over M devices
(`config.mesh.model`; the rest of the devices split the batch): each row then also reports the
train state's bytes on one device ("state/device"), which falls as 1/M for large catalogues. The
memory budget stays per process (the estimate is not divided by M).

Imports only jax, flax, optax, numpy and the project's TF-free modules, so it runs on a bare
accelerator image.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

# Runnable as a script from anywhere in the checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

VARIANTS = ("full", "chunked", "sampled_softmax", "gbce")
GIB = 2**30


def parse_size(text: str) -> int:
    """'3.4k' -> 3400, '1M' -> 1000000, '54542' -> 54542."""
    text = text.strip()
    scale = {"k": 10**3, "K": 10**3, "m": 10**6, "M": 10**6}.get(text[-1:], 1)
    return int(round(float(text[:-1] if scale > 1 else text) * scale))


def estimate_bytes(variant: str, num_items: int, args) -> tuple[int, str]:
    """A lower bound of the cell's memory and what dominates it."""
    vocab = num_items + 2
    rows = args.batch * args.predictions
    # Parameters, gradients, Adam's two moments and the update: five [V, H] float32 arrays.
    table_state = 5 * vocab * args.hidden * 4
    if variant == "full":
        logits = rows * vocab * 4
        # The step holds the logits, their softmax and its gradient: the Beauty cell measures
        # ~4x the logits above the 1-item baseline (2-core CPU).
        return max(4 * logits, table_state), f"logits alone {logits / GIB:.1f} GiB, x4"
    return table_state, f"table + AdamW {table_state / GIB:.1f} GiB"


def run_cell(variant: str, num_items: int, args) -> dict:
    """Times the train step in this process; returns the row as a dict."""
    import jax

    from bert4rec_jax import losses, sharding

    shape = common.Shape(
        batch=args.batch,
        max_len=args.max_len,
        hidden=args.hidden,
        layers=args.layers,
        heads=2,
        num_items=num_items,
        predictions=args.predictions,
    )
    loss_config = losses.LossConfig(
        type=variant, chunk_size=args.chunk_size, num_negatives=args.num_negatives
    )
    mesh = sharding.make_mesh(model=args.model_axis)
    sharding.check_batch_size("--batch", args.batch, mesh)
    built = common.build_step(shape, mesh, dtype=args.dtype, loss_config=loss_config)
    step, state = built.step, built.state
    # The train state's bytes held by one device: its shard of every array.
    device = jax.devices()[0]
    state_bytes = sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(state)
        for shard in leaf.addressable_shards
        if shard.device == device
    )
    batch = sharding.global_batch(mesh, common.synthetic_batch(shape))

    start = time.perf_counter()
    state, metrics = step(state, batch)  # compiles, then runs once
    jax.block_until_ready(state)
    first = time.perf_counter() - start
    state, elapsed, metrics = common.timed(
        lambda st, s: step(st, batch), state, warmup=args.warmup, steps=args.steps
    )

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        peak, source = stats["peak_bytes_in_use"], "device"
    else:  # CPU: the whole process's high-water mark
        peak, source = common.peak_rss_mib() * 2**20, "rss"
    return {
        "ms_per_step": 1e3 * elapsed / args.steps,
        "first_step_s": first,
        "peak_gib": peak / GIB,
        "peak_source": source,
        "state_gib_per_device": state_bytes / GIB,
        "loss": float(metrics["loss_sum"] / metrics["weight_sum"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="ml-1m", choices=sorted(common.SHAPES))
    parser.add_argument("--sizes", default="3.4k,54k,200k,1M,10M", help="items, e.g. 54542,1M")
    parser.add_argument("--variants", default="full,chunked,sampled_softmax", help=str(VARIANTS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the first")
    parser.add_argument("--batch", type=int, default=None, help="default: the shape's")
    parser.add_argument("--max_len", type=int, default=None, help="default: the shape's")
    parser.add_argument("--predictions", type=int, default=None, help="default: the shape's")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--chunk_size", type=int, default=8192)
    parser.add_argument("--num_negatives", type=int, default=1024)
    parser.add_argument(
        "--model_axis", type=int, default=1, help="devices the item table is split over"
    )
    parser.add_argument(
        "--mem_gib", type=float, default=24.0, help="memory a cell may use; larger ones are skipped"
    )
    parser.add_argument("--cell", default="", help=argparse.SUPPRESS)  # "variant,items": child
    args = parser.parse_args(argv)
    for name in ("batch", "max_len", "predictions"):  # the paper's, unless given
        if getattr(args, name) is None:
            setattr(args, name, getattr(common.SHAPES[args.shape], name))

    if args.cell:
        variant, items = args.cell.split(",")
        print(json.dumps(run_cell(variant, int(items), args)), flush=True)
        return

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"--variants: {v!r} is not one of {VARIANTS}")
    print(
        f"shape {args.shape}: batch {args.batch}, max_len {args.max_len}, predictions "
        f"{args.predictions}, d {args.hidden}, {args.layers} layers, {args.dtype}; chunk "
        f"{args.chunk_size}, {args.num_negatives} negatives; model axis {args.model_axis}; "
        f"{args.steps} timed steps after "
        f"{1 + args.warmup}; budget {args.mem_gib:g} GiB",
        flush=True,
    )
    print(f"{'items':>10s} {'variant':16s} {'ms/step':>10s} {'peak GiB':>9s}  note", flush=True)
    child_argv = [
        a for a in (argv if argv is not None else sys.argv[1:]) if a.split("=")[0] != "--cell"
    ]
    for items in sizes:
        for variant in variants:
            need, what = estimate_bytes(variant, items, args)
            if need > args.mem_gib * GIB:
                print(f"{items:>10d} {variant:16s} {'does not fit':>20s}  ({what})", flush=True)
                continue
            out = subprocess.run(
                [sys.executable, __file__, *child_argv, f"--cell={variant},{items}"],
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                tail = (out.stderr.strip().splitlines() or ["?"])[-1][:120]
                print(f"{items:>10d} {variant:16s} {'failed':>20s}  ({tail})", flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{items:>10d} {variant:16s} {row['ms_per_step']:10.0f} {row['peak_gib']:9.2f}  "
                f"{row['peak_source']}, state/device {row['state_gib_per_device']:.3f} GiB, "
                f"first step {row['first_step_s']:.1f} s, "
                f"loss {row['loss']:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
