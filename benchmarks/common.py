"""What the benchmarks share: the paper's shapes, a synthetic batch, the train step built as
training builds it, the warm-up-then-time loop and the process's peak memory.

Only the standard library and numpy at the top; jax and the project's TF-free modules are
imported inside the functions that need them (catalog_scaling's parent process never imports
jax), so every benchmark still runs alone on a bare accelerator image with jax, flax, optax and
numpy. A script imports it as `from benchmarks import common` once the repository root is on
`sys.path` (each script puts it there).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Shape:
    """A train step's shape: batch, positions, model size, catalogue and prediction slots."""

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


def synthetic_batch(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """Right-padded histories of random length, about a fifth of each history [MASK]ed (at least
    one, at most `predictions`), labels drawn over all items; unused slots are padding."""
    rng = np.random.default_rng(seed)
    b, n, p = shape.batch, shape.max_len, shape.predictions
    mask_id = shape.num_items + 1
    lengths = rng.integers(n // 4, n + 1, size=b)
    items = rng.integers(1, shape.num_items + 1, size=(b, n))
    ids = np.where(np.arange(n) < lengths[:, None], items, 0)
    positions = np.zeros((b, p), np.int32)
    weights = np.zeros((b, p), np.float32)
    for i in range(b):
        k = min(p, max(1, int(0.2 * lengths[i])))
        positions[i, :k] = np.sort(rng.choice(lengths[i], size=k, replace=False))
        weights[i, :k] = 1.0
    labels = np.take_along_axis(ids, positions, axis=1) * (weights > 0)
    rows = np.arange(b)[:, None]
    ids[rows, positions] = np.where(weights > 0, mask_id, ids[rows, positions])
    return {
        "ids": ids.astype(np.int32),
        "positions": positions,
        "labels": labels.astype(np.int32),
        "weights": weights,
    }


def next_item_batch(shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """A left-to-right (SASRec) batch: right-padded histories of random length, each position's
    label the next item, every real position predicted (`predictions` is not read)."""
    rng = np.random.default_rng(seed)
    b, n = shape.batch, shape.max_len
    lengths = rng.integers(n // 4, n + 1, size=b)  # items in each window, inputs and last label
    items = rng.integers(1, shape.num_items + 1, size=(b, n + 1))
    real = np.arange(n + 1) < lengths[:, None]
    window = np.where(real, items, 0)
    inputs = np.where(real[:, 1:], window[:, :-1], 0)  # all but each window's last item
    return {
        "ids": inputs.astype(np.int32),
        "positions": np.broadcast_to(np.arange(n, dtype=np.int32), (b, n)).copy(),
        "labels": window[:, 1:].astype(np.int32),
        "weights": real[:, 1:].astype(np.float32),
    }


def batch_of(kind: str, shape: Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """The batch a model of `kind` trains on: cloze (BERT4Rec) or next-item (left to right)."""
    return synthetic_batch(shape, seed) if kind == "bert4rec" else next_item_batch(shape, seed)


def device_batch(shape: Shape, mesh, seed: int = 0, kind: str = "bert4rec") -> dict:
    """`batch_of(kind)` on the devices, split over the mesh's data axis as training splits it."""
    import jax

    from bert4rec_jax import sharding

    sharding.check_batch_size("batch", shape.batch, mesh)
    data = sharding.data_sharded(mesh)
    return {k: jax.device_put(v, data) for k, v in batch_of(kind, shape, seed).items()}


@dataclasses.dataclass(frozen=True)
class Step:
    """The train step as training builds it (`bert4rec_jax.train_step`), for a benchmark.

    Attributes:
      model: the Flax model.
      state: the train state, created sharded on the mesh.
      step: the jitted step, `step(state, batch) -> (state, metric sums)`, state donated.
      train_step: the same step unjitted (for `DeviceInput.jit_fused_step`).
    """

    model: Any
    state: Any
    step: Callable
    train_step: Callable


def build_step(
    shape: Shape,
    mesh,
    *,
    dtype: str = "float32",
    attention_impl: str | None = None,
    hidden_dropout: float = 0.2,
    loss_config=None,
    item_counts: np.ndarray | None = None,
    kind: str = "bert4rec",
    last_block: str = "all",
) -> Step:
    """A model of `shape` with the trainer's optimizer (warm-up 100 steps to 1e-3, decay over
    10,000; clip + AdamW) and its jitted step: BERT4Rec (FFN 4 d, attention dropout 0.2), or
    SASRec as published (FFN d, LayerNorm epsilon 1e-8, every position predicted).

    Args:
      shape: the model's and the batch's shape; `num_items` sets the vocabulary.
      mesh: the device mesh (`sharding.make_mesh`).
      dtype: the compute dtype, "float32" or "bfloat16".
      attention_impl: `models.ModelConfig.attention_impl`.
      hidden_dropout: dropout on embeddings, attention and FFN outputs.
      loss_config: a `losses.LossConfig`; None = the trainer's default.
      item_counts: item popularity, for the sampled losses' popularity proposal.
      kind: `models.ModelConfig.kind`.
      last_block: `models.ModelConfig.last_block` ("scored": the last block at the predicted
        positions only).
    """
    import jax.numpy as jnp

    from bert4rec_jax import models, optimizer
    from bert4rec_jax import train_step as train_step_lib

    config = models.ModelConfig(
        vocab_size=shape.num_items + 2,
        max_len=shape.max_len,
        hidden_size=shape.hidden,
        num_layers=shape.layers,
        num_heads=shape.heads,
        intermediate_size=4 * shape.hidden if kind == "bert4rec" else shape.hidden,
        hidden_dropout=hidden_dropout,
        attention_dropout=0.2,
        layer_norm_eps=1e-12 if kind == "bert4rec" else 1e-8,
        dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype],
        attention_impl=attention_impl,
        kind=kind,
        last_block=last_block,
    )
    model = models.build_model(config, config.vocab_size)
    predictions = shape.predictions if kind == "bert4rec" else shape.max_len
    schedule = optimizer.make_schedule(1e-3, 100, 10_000)
    tx = optimizer.make_optimizer(schedule)
    # The very step training runs, so what is timed is what is trained.
    state = train_step_lib.create_train_state(model, tx, mesh, max_predictions=predictions, seed=0)
    train_step = train_step_lib.make_train_step(
        model, tx, schedule, loss_config, item_counts=item_counts, mesh=mesh
    )
    return Step(model, state, train_step_lib.jit_train_step(train_step, state, mesh), train_step)


def timed(fn: Callable[[Any, int], tuple[Any, Any]], state: Any, *, warmup: int, steps: int):
    """Runs `state, out = fn(state, s)` `warmup` times untimed, then `steps` times timed.

    `s` counts from 0 on every call (a device feed then redraws the same batches each round).
    The clock stops once the state is on hand (`block_until_ready`), so each timed step's
    device work counts, not only its dispatch.

    Returns:
      (the state, the timed steps' seconds, the last `out`).
    """
    import jax

    out = None
    for s in range(warmup):
        state, out = fn(state, s)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for s in range(warmup, warmup + steps):
        state, out = fn(state, s)
    jax.block_until_ready(state)
    return state, time.perf_counter() - start, out


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    Linux's VmHWM belongs to the process image, whereas ru_maxrss survives fork + exec and so
    would report the parent's peak in a child; ru_maxrss (KiB on Linux) elsewhere.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclasses.dataclass(frozen=True)
class Workload:
    """A data set's shape and recipe, copied from its configs/*.py file (no ml_collections here).

    Attributes:
      users, items, min_length, mean_length: the real data set's size, for a synthetic stand-in.
      split_mode: the config's split_mode.
      shape: the train step's shape.
      hidden_dropout: the config's model.hidden_dropout.
      input: the fields of `cloze.InputConfig` (`input_config()` builds it).
    """

    users: int
    items: int
    min_length: int
    mean_length: float
    split_mode: str
    shape: Shape
    hidden_dropout: float
    input: dict

    def input_config(self):
        """The recipe's `cloze.InputConfig`."""
        from bert4rec_jax import cloze

        return cloze.InputConfig(**self.input)


WORKLOADS = {
    # configs/ml_100k_v1.py, the first ML-100K recipe (configs/ml_100k.py now trains 50
    # positions at batch 64); the real file has 943 users, 1,682 items, 100,000 ratings (>= 20
    # each).
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
        input=dict(max_len=100, mask_prob=0.2, max_predictions=20, sliding_step=50, dupe_factor=10),
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
        input=dict(max_len=50, mask_prob=0.6, max_predictions=30, sliding_step=5, dupe_factor=10),
    ),
}


def load_corpus(name: str, data_dir: str):
    """A workload's corpus: the real file under `data_dir`, or synthetic of the same shape.

    Returns:
      (the `Corpus`, where it came from in words).
    """
    import pathlib

    from bert4rec_jax.datasets import readers
    from bert4rec_jax.datasets.corpus import corpus_from_sequences

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


# ---- Training runs in subprocesses (ablations.py, search.py) ------------------------------------

# Two-sided 95% Student-t quantiles by degrees of freedom (n - 1 seeds).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% Student-t interval over the values); nan for one value."""
    import math
    import statistics

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    t = _T95.get(len(values) - 1, 1.96)
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def train_run(workdir, config: str, overrides: list[str], summary_name: str) -> dict[str, Any]:
    """Runs `python -m bert4rec_jax.train` once into `workdir` unless it finished before.

    The summary (`<workdir>/<summary_name>`) is written only when the command succeeded, so a
    run that died before it is started again from scratch (its clock is lost with it).

    Args:
      workdir: the run's workdir (a pathlib.Path).
      config: the config file, relative to the repository root.
      overrides: further flags (`--config.x=y`, `--notest`).
      summary_name: the summary file's name.

    Returns:
      {"train_seconds": wall-clock from the command's start to its last training step (data,
      compilation and validations included), "cpu_seconds": the command's user + sys time of
      every thread (a budget other jobs on the cores inflate far less), "valid": the validation
      rows of metrics.jsonl, "test": test_results.json or None}.
    """
    import json
    import pathlib
    import resource
    import shutil
    import subprocess
    import sys

    summary_path = workdir / summary_name
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    if workdir.exists() and any(workdir.iterdir()):
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    repo = pathlib.Path(__file__).resolve().parents[1]
    command = [
        sys.executable, "-m", "bert4rec_jax.train", f"--config={config}",
        f"--workdir={workdir}", *overrides,
    ]  # fmt: skip
    print(" ".join(command), flush=True)

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    start, cpu_before = time.time(), children_cpu()
    with open(workdir / "train.log", "w") as log:
        subprocess.run(command, cwd=repo, stdout=log, stderr=subprocess.STDOUT, check=True)
    cpu_seconds = children_cpu() - cpu_before
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    last_train = max((r for r in rows if "train/loss" in r), key=lambda r: r["step"])
    test_path = workdir / "test_results.json"
    summary = {
        "train_seconds": last_train["time"] - start,
        "cpu_seconds": cpu_seconds,
        "valid": [r for r in rows if any(k.startswith("valid/") for k in r)],
        "test": json.loads(test_path.read_text()) if test_path.exists() else None,
    }
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary
