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
import time

# Runnable as a script from anywhere in the checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bert4rec_jax import device_input, input_pipeline, models, optimizer, sharding  # noqa: E402
from bert4rec_jax import train_step as train_step_lib  # noqa: E402
from bert4rec_jax.datasets import readers  # noqa: E402
from bert4rec_jax.datasets.corpus import Corpus, corpus_from_sequences, leave_one_out  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    max_len: int
    hidden: int
    layers: int
    heads: int
    num_items: int
    predictions: int


# The paper's settings (Sun et al. 2019, Sec. 4.3 and the released configs).
SHAPES = {
    "ml-1m": Shape(
        batch=256, max_len=200, hidden=64, layers=2, heads=2, num_items=3416, predictions=40
    ),
    "beauty": Shape(
        batch=256, max_len=50, hidden=64, layers=2, heads=2, num_items=54542, predictions=30
    ),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Workload:
    """A data set's shape and recipe (its configs/*.py file, copied: no ml_collections here)."""

    users: int
    items: int
    min_length: int
    mean_length: float
    split_mode: str
    shape: Shape
    hidden_dropout: float
    input: input_pipeline.InputConfig


WORKLOADS = {
    # configs/ml_100k.py; the real file has 943 users, 1,682 items, 100,000 ratings (>= 20 each).
    "ml-100k": Workload(
        users=943,
        items=1682,
        min_length=20,
        mean_length=106.0,
        split_mode="standard",
        shape=Shape(
            batch=128, max_len=100, hidden=64, layers=2, heads=2, num_items=1682, predictions=20
        ),
        hidden_dropout=0.2,
        input=input_pipeline.InputConfig(
            max_len=100, mask_prob=0.2, max_predictions=20, sliding_step=50, dupe_factor=10
        ),
    ),
    # configs/beauty.py (+ paper_recipe.py); the paper's file: 40,226 users, 54,542 items,
    # 353,962 interactions (>= 5 each).
    "beauty": Workload(
        users=40226,
        items=54542,
        min_length=5,
        mean_length=8.8,
        split_mode="paper",
        shape=Shape(
            batch=256, max_len=50, hidden=64, layers=2, heads=2, num_items=54542, predictions=30
        ),
        hidden_dropout=0.5,
        input=input_pipeline.InputConfig(
            max_len=50, mask_prob=0.6, max_predictions=30, sliding_step=5, dupe_factor=10
        ),
    ),
}


def synthetic_batch(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """Right-padded histories of random length with `predictions` slots, some of them padding."""
    rng = np.random.default_rng(seed)
    b, n, p = shape.batch, shape.max_len, shape.predictions
    mask_id = shape.num_items + 1
    lengths = rng.integers(n // 4, n + 1, size=b)
    labels_full = rng.integers(1, shape.num_items + 1, size=(b, n))
    ids = np.where(np.arange(n) < lengths[:, None], labels_full, 0)
    positions = np.zeros((b, p), np.int64)
    weights = np.zeros((b, p), np.float32)
    for i in range(b):
        k = min(p, max(1, int(0.2 * lengths[i])))
        positions[i, :k] = np.sort(rng.choice(lengths[i], size=k, replace=False))
        weights[i, :k] = 1.0
    labels = np.take_along_axis(ids, positions, axis=1) * (weights > 0)
    ids[np.arange(b)[:, None], positions] = np.where(
        weights > 0, mask_id, ids[np.arange(b)[:, None], positions]
    )
    return {
        "ids": ids.astype(np.int32),
        "positions": positions.astype(np.int32),
        "labels": labels.astype(np.int32),
        "weights": weights,
    }


def build(shape: Shape, dtype, attention_impl: str | None, mesh, hidden_dropout: float = 0.2):
    """Returns (jitted step, state, batch, unjitted step), all already on the devices."""
    cfg = models.ModelConfig(
        vocab_size=shape.num_items + 2,
        max_len=shape.max_len,
        hidden_size=shape.hidden,
        num_layers=shape.layers,
        num_heads=shape.heads,
        intermediate_size=4 * shape.hidden,
        hidden_dropout=hidden_dropout,
        attention_dropout=0.2,
        dtype=dtype,
        attention_impl=attention_impl,
    )
    model = models.BERT4Rec(cfg)
    schedule = optimizer.make_schedule(1e-3, 100, 10_000)
    tx = optimizer.make_optimizer(schedule)
    # The very step training runs (bert4rec_jax.train_step), so what is timed is what is trained.
    state = train_step_lib.create_train_state(
        model, tx, mesh, max_predictions=shape.predictions, seed=0
    )
    train_step = train_step_lib.make_train_step(model, tx, schedule)
    step = train_step_lib.jit_train_step(train_step, state, mesh)
    data = sharding.data_sharded(mesh)
    sharding.check_batch_size("batch", shape.batch, mesh)
    batch = {k: jax.device_put(v, data) for k, v in synthetic_batch(shape).items()}
    return step, state, batch, train_step


def fmt_bytes(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def run(name: str, dtype_name: str, args, mesh) -> None:
    shape = SHAPES[name]
    step, state, batch, _ = build(shape, DTYPES[dtype_name], args.attention_impl or None, mesh)

    compiled = step.lower(state, batch).compile()
    try:
        mem = compiled.memory_analysis()
        compiled_bytes = (
            mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
        )
    except Exception:  # not every backend reports it
        compiled_bytes = None

    for _ in range(args.warmup):
        state, sums = step(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, sums = step(state, batch)
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    loss = float(sums["loss_sum"] / sums["weight_sum"])
    ms = 1e3 * elapsed / args.steps
    print(
        f"{name:7s} {dtype_name:9s} {ms:10.2f} {shape.batch * args.steps / elapsed:12.0f} "
        f"{fmt_bytes(compiled_bytes):>12s} {fmt_bytes(peak):>12s} {loss:8.3f}",
        flush=True,
    )


def load_corpus(name: str, data_dir: str) -> tuple[Corpus, str]:
    """The workload's corpus: the real file under `data_dir`, or synthetic of the same shape."""
    w = WORKLOADS[name]
    if data_dir:
        root = pathlib.Path(data_dir)
        if name == "ml-100k":
            seqs = readers.read_movielens_ratings(root / "ml-100k", "100k")
        else:
            seqs = readers.read_paper_file(root / "beauty.txt")
        corpus = corpus_from_sequences(name, seqs.raw_user_ids, seqs.offsets, seqs.raw_items)
        return corpus, f"file under {root}"
    # Lengths min_length + geometric: the minimum and mean of the real data set.
    rng = np.random.default_rng(0)
    lengths = w.min_length - 1 + rng.geometric(1 / (w.mean_length - w.min_length + 1), w.users)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(1, w.items + 1, size=int(offsets[-1]))
    return corpus_from_sequences(name, np.arange(w.users), offsets, items), "synthetic"


def timed(fn, state, warmup: int, num_steps: int):
    """Runs `state, _ = fn(state, s)` for warm-up, then timed steps; returns (state, seconds).

    `s` counts from 0 on every call: the device feed then redraws the same batches each round.
    """
    s = 0
    for _ in range(warmup):
        state, _ = fn(state, s)
        s += 1
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(num_steps):
        state, _ = fn(state, s)
        s += 1
    jax.block_until_ready(state)
    return state, time.perf_counter() - start


def run_inputs(name: str, args, mesh) -> None:
    """One data set: the step alone, fed by the device path, fed by tf.data."""
    w = WORKLOADS[name]
    corpus, origin = load_corpus(name, args.data)
    split = leave_one_out(corpus, w.split_mode)
    shape = dataclasses.replace(w.shape, num_items=corpus.num_items)
    step, state, _, train_step = build(
        shape, jnp.float32, args.attention_impl or None, mesh, w.hidden_dropout
    )
    source = device_input.DeviceInput(corpus, split, w.input, shape.batch, mesh)
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
        host = input_pipeline.TrainingInstances(corpus, split, w.input).dataset(shape.batch)
    except ImportError as e:
        print(f"# tf.data skipped: TensorFlow cannot be imported ({e})", flush=True)
    else:
        batches = sharding.prefetch_to_device(host.as_numpy_iterator(), mesh, size=2)
        feeds["tf.data + prefetch"] = lambda st, s: step(st, next(batches))
    # Rounds alternate the feeds, so that a change in the machine's load hits them all alike.
    times = {feed: [] for feed in feeds}
    for r in range(args.rounds):
        for feed, fn in feeds.items():
            state, elapsed = timed(fn, state, args.warmup if r == 0 else 0, args.steps)
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
        "--shapes", default="ml-1m,beauty", help=f"from {sorted(SHAPES)}; empty: no first table"
    )
    parser.add_argument("--dtypes", default="float32,bfloat16", help=f"from {sorted(DTYPES)}")
    parser.add_argument(
        "--attention_impl",
        default="",
        help='"" (JAX chooses), xla, cudnn or manual; training with attention dropout always '
        "uses the manual path",
    )
    parser.add_argument(
        "--inputs",
        default="ml-100k,beauty",
        help=f"from {sorted(WORKLOADS)}: the step fed by each input path; empty: no second table",
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
