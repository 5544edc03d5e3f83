"""Training-step throughput of BERT4Rec on the paper's shapes, with synthetic device-resident data.

    python benchmarks/train_step.py --steps=20 --warmup=2
    python benchmarks/train_step.py --shapes=ml-1m --dtypes=bfloat16 --attention_impl=cudnn

Prints, per (shape, dtype): ms/step, sequences/s, the compiled step's memory (arguments + outputs +
temporaries, from XLA's analysis) and the device's peak memory since the process started
(`memory_stats()`; "n/a" on CPU). Only jax/flax/optax/numpy are needed: no TensorFlow, no
ml_collections, so it runs on a bare accelerator image.

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

from bert4rec_jax import models, optimizer, sharding, steps  # noqa: E402


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


def build(shape: Shape, dtype, attention_impl: str | None, mesh):
    """Returns (jitted step, state, batch), all already on the devices."""
    cfg = models.ModelConfig(
        vocab_size=shape.num_items + 2,
        max_len=shape.max_len,
        hidden_size=shape.hidden,
        num_layers=shape.layers,
        num_heads=shape.heads,
        intermediate_size=4 * shape.hidden,
        hidden_dropout=0.2,
        attention_dropout=0.2,
        dtype=dtype,
        attention_impl=attention_impl,
    )
    model = models.BERT4Rec(cfg)
    schedule = optimizer.make_schedule(1e-3, 100, 10_000)
    tx = optimizer.make_optimizer(schedule)
    # The very step training runs (bert4rec_jax.steps), so what is timed is what is trained.
    state = steps.create_train_state(model, tx, mesh, max_predictions=shape.predictions, seed=0)
    step = steps.jit_train_step(steps.make_train_step(model, tx, schedule), state, mesh)
    data = sharding.data_sharded(mesh)
    sharding.check_batch_size("batch", shape.batch, mesh)
    batch = {k: jax.device_put(v, data) for k, v in synthetic_batch(shape).items()}
    return step, state, batch


def fmt_bytes(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def run(name: str, dtype_name: str, args, mesh) -> None:
    shape = SHAPES[name]
    step, state, batch = build(shape, DTYPES[dtype_name], args.attention_impl or None, mesh)

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--shapes", default="ml-1m,beauty", help=f"from {sorted(SHAPES)}")
    parser.add_argument("--dtypes", default="float32,bfloat16", help=f"from {sorted(DTYPES)}")
    parser.add_argument(
        "--attention_impl",
        default="",
        help='"" (JAX chooses), xla, cudnn or manual; training with attention dropout always '
        "uses the manual path",
    )
    args = parser.parse_args(argv)

    mesh = sharding.make_mesh()
    print(
        f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"mesh {dict(mesh.shape)}; {args.steps} timed steps after {args.warmup} warm-up"
    )
    print(
        f"{'shape':7s} {'dtype':9s} {'ms/step':>10s} {'seqs/s':>12s} {'compiled':>12s} "
        f"{'peak':>12s} {'loss':>8s}"
    )
    for name in args.shapes.split(","):
        for dtype_name in args.dtypes.split(","):
            run(name.strip(), dtype_name.strip(), args, mesh)


if __name__ == "__main__":
    main()
