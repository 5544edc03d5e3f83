"""Training-step throughput of BERT4Rec, alone and fed by each input path.

    python benchmarks/train_step.py --steps=20 --warmup=2
    python benchmarks/train_step.py --shapes=ml-1m --dtypes=bfloat16 --attention_impl=cudnn
    python benchmarks/train_step.py --shapes= --inputs=ml-100k,beauty --data=../shared/data

First table (`--shapes`), the paper's shapes with one synthetic device-resident batch: per
(shape, dtype), ms/step, sequences/s, the compiled step's memory (arguments + outputs +
temporaries, from XLA's analysis) and the device's peak memory since the process started
(`memory_stats()`; "n/a" on CPU).

Second table (`--inputs`), the same step fed three ways, on one data set's corpus and recipe:
  step alone: one batch made beforehand on the devices, reused every step;
  device: `DeviceInput.batch(step)` beside the step, and `jit_fused_step` (drawn inside it);
  tf.data: host batches from `input_pipeline` (`TrainingInstances.dataset`), lifted to the
    devices two ahead by `sharding.prefetch_to_device`: what `input.pipeline="tf.data"` runs.
Corpora: ML-100K (`<data>/ml-100k/u.data`) and Beauty (`<data>/beauty.txt`) when `--data` is
given, else synthetic corpora of the same shape (users, items, mean length).

Only jax/flax/optax/numpy are needed for everything but the tf.data rows: TensorFlow is imported
for those alone, and they are skipped with a note where it is missing, so the script runs on a
bare accelerator image.

The step mirrors the trainer's: the default loss at the masked positions (`config.loss.type="auto"`:
the full softmax, chunked above 10k items; benchmarks/catalog_scaling.py compares them), dropout on,
gradients, clip + Adam + weight decay, parameters replicated and the batch split over the mesh's
data axis, state donated.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

# Runnable as a script from anywhere in the checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from bert4rec_jax import device_input, input_pipeline, sharding  # noqa: E402
from bert4rec_jax.datasets.corpus import leave_one_out  # noqa: E402

DTYPES = ("float32", "bfloat16")


def fmt_bytes(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def run(name: str, dtype_name: str, args, mesh) -> None:
    shape = common.SHAPES[name]
    built = common.build_step(
        shape, mesh, dtype=dtype_name, attention_impl=args.attention_impl or None
    )
    step, state = built.step, built.state
    batch = common.device_batch(shape, mesh)

    compiled = step.lower(state, batch).compile()
    try:
        mem = compiled.memory_analysis()
        compiled_bytes = (
            mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
        )
    except Exception:  # not every backend reports it
        compiled_bytes = None

    state, elapsed, sums = common.timed(
        lambda st, s: step(st, batch), state, warmup=args.warmup, steps=args.steps
    )
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    loss = float(sums["loss_sum"] / sums["weight_sum"])
    ms = 1e3 * elapsed / args.steps
    print(
        f"{name:7s} {dtype_name:9s} {ms:10.2f} {shape.batch * args.steps / elapsed:12.0f} "
        f"{fmt_bytes(compiled_bytes):>12s} {fmt_bytes(peak):>12s} {loss:8.3f}",
        flush=True,
    )


def run_inputs(name: str, args, mesh) -> None:
    """One data set: the step alone, fed by the device path, fed by tf.data."""
    w = common.WORKLOADS[name]
    corpus, origin = common.load_corpus(name, args.data)
    split = leave_one_out(corpus, w.split_mode)
    shape = dataclasses.replace(w.shape, num_items=corpus.num_items)
    built = common.build_step(
        shape, mesh, attention_impl=args.attention_impl or None, hidden_dropout=w.hidden_dropout
    )
    step, state, train_step = built.step, built.state, built.train_step
    input_config = w.input_config()
    source = device_input.DeviceInput(corpus, split, input_config, shape.batch, mesh)
    print(
        f"# {name} ({origin}): {corpus.num_users:,} users, {corpus.num_items:,} items, "
        f"{corpus.num_interactions:,} interactions; {source.num_windows:,} windows, "
        f"{source.num_instances:,} instances per epoch; batch {shape.batch}, max_len "
        f"{shape.max_len}, {shape.predictions} predictions",
        flush=True,
    )
    premade = source.batch(0)
    fused = source.jit_fused_step(train_step, state)
    feeds = {
        "step alone": lambda st, s: step(st, premade),
        "device": lambda st, s: step(st, source.batch(s)),
        "device, fused": lambda st, s: fused(st),
    }
    try:  # TensorFlow is imported here, for the tf.data rows only
        host = input_pipeline.TrainingInstances(corpus, split, input_config).dataset(shape.batch)
    except ImportError as e:
        print(f"# tf.data skipped: TensorFlow cannot be imported ({e})", flush=True)
    else:
        batches = sharding.prefetch_to_device(host.as_numpy_iterator(), mesh, size=2)
        feeds["tf.data + prefetch"] = lambda st, s: step(st, next(batches))
    # Rounds alternate the feeds, so that a change in the machine's load hits them all alike.
    times = {feed: [] for feed in feeds}
    for r in range(args.rounds):
        for feed, fn in feeds.items():
            warmup = args.warmup if r == 0 else 0
            state, elapsed, _ = common.timed(fn, state, warmup=warmup, steps=args.steps)
            times[feed].append(elapsed / args.steps)
    alone = float(np.median(times["step alone"]))
    for feed, seconds in times.items():
        sec = float(np.median(seconds))
        print(
            f"{name:8s} {feed:20s} {1e3 * sec:10.2f} {shape.batch / sec:10.0f} {alone / sec:14.2f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument(
        "--shapes",
        default="ml-1m,beauty",
        help=f"from {sorted(common.SHAPES)}; empty: no first table",
    )
    parser.add_argument("--dtypes", default="float32,bfloat16", help=f"from {list(DTYPES)}")
    parser.add_argument(
        "--attention_impl",
        default="",
        help='"" (JAX chooses), xla, cudnn or manual; training with attention dropout always '
        "uses the manual path",
    )
    parser.add_argument(
        "--inputs",
        default="ml-100k,beauty",
        help=f"from {sorted(common.WORKLOADS)}: the step fed by each input path; empty: no "
        "second table",
    )
    parser.add_argument(
        "--data",
        default="",
        help="folder with ml-100k/u.data and beauty.txt; empty: synthetic corpora of their shape",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="input table: rounds of every feed; medians shown"
    )
    args = parser.parse_args(argv)

    mesh = sharding.make_mesh()
    print(
        f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"mesh {dict(mesh.shape)}; {args.steps} timed steps after {args.warmup} warm-up"
    )
    shapes = [x.strip() for x in args.shapes.split(",") if x.strip()]
    if shapes:
        print(
            f"{'shape':7s} {'dtype':9s} {'ms/step':>10s} {'seqs/s':>12s} {'compiled':>12s} "
            f"{'peak':>12s} {'loss':>8s}"
        )
    for name in shapes:
        for dtype_name in args.dtypes.split(","):
            run(name, dtype_name.strip(), args, mesh)
    inputs = [x.strip() for x in args.inputs.split(",") if x.strip()]
    if inputs:
        print(
            f"{'data':8s} {'feed (float32)':20s} {'ms/step':>10s} {'seqs/s':>10s} "
            f"{'speed vs alone':>14s}"
        )
    for name in inputs:
        run_inputs(name, args, mesh)


if __name__ == "__main__":
    main()
