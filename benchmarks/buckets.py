"""Training sequences/s with and without length buckets, side by side, at a data set's shape.

    python benchmarks/buckets.py --data=../shared/data            # Beauty, the paper's recipe
    python benchmarks/buckets.py --data=../shared/data --loss=sampled_softmax --rounds=3
    python benchmarks/buckets.py --data=../shared/data --last_block=all,scored

The workload is Beauty's paper shape (benchmarks/train_step.py's "beauty": the paper's file,
its split, 50 positions, 30 prediction slots, mask rate 0.6, batch 256, hidden 64, 2 layers,
dropout 0.5; the loss of `--loss`, "auto" = the exact chunked softmax over 54.5k items).
Without `--data` a synthetic corpus of Beauty's shape stands in.

Printed, in one run:
  1. padding: the share of computed positions and prediction slots that hold something, over
     one epoch, without buckets, with `--buckets`, and for ideal packing (every position and
     slot used), the argument for buckets over packing (see docs/training.md, "Length buckets");
  2. the step alone on one premade batch per shape (unbucketed, and each bucket), rounds
     interleaved; the bucketed sequences/s is the epoch's: G * batches / sum over the epoch's
     batches of their bucket's step time (each bucket weighs its share of the epoch's batches);
  3. the step fed by tf.data for `--fed_steps` consecutive steps of epoch 0, with and without
     buckets (what training runs; noisier: a short window samples the buckets unevenly).
The speed-up is the ratio of sequences/s. CPU timings depend on the machine's load: say it.

`--last_block=all,scored` times the steps of both settings of `model.last_block` (the last block
at every position, or only at the predicted ones), interleaved in the same rounds, with their
losses on the same batches side by side (dropout off, so that they compare: the same function).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from bert4rec_jax import cloze, input_pipeline, losses, sharding  # noqa: E402
from bert4rec_jax.datasets.corpus import leave_one_out  # noqa: E402


def padding_table(instances: input_pipeline.TrainingInstances, g: int) -> None:
    """Shares of computed positions / slots that hold an item / a prediction, over epoch 0."""
    config = instances.config
    plain = dataclasses.replace(config, buckets=())
    flat = input_pipeline.TrainingInstances(instances.corpus, instances.split, plain)
    indices = flat.local_indices(0, g).ravel()
    windows = flat.instance_windows(indices, 0)
    lengths = flat.windows.lengths[windows].astype(np.int64)
    last = indices >= flat.num_masked_rows
    slots = np.where(last, 1, cloze.num_masked(lengths, config))
    spe = len(indices) // g
    rows = {"no buckets": (spe * g * config.max_len, spe * g * config.max_predictions)}
    buckets = instances.batch_buckets(0, g)
    shapes = np.array([config.bucket_shape(int(b)) for b in buckets])  # [S, 2]
    rows[f"buckets {config.bucket_sizes}"] = (g * shapes[:, 0].sum(), g * shapes[:, 1].sum())
    rows["ideal packing"] = (lengths.sum(), slots.sum())
    print(f"# epoch 0: {len(indices):,} instances, {lengths.sum():,} items, {slots.sum():,} slots")
    print(f"{'grouping':28s} {'positions':>12s} {'used':>6s} {'slots':>12s} {'used':>6s}")
    for name, (pos, slot) in rows.items():
        print(
            f"{name:28s} {pos:12,d} {lengths.sum() / pos:6.1%} {slot:12,d} "
            f"{slots.sum() / slot:6.1%}"
        )
    fractions = np.bincount(buckets, minlength=len(config.bucket_sizes)) / len(buckets)
    print(
        "# batches per bucket: "
        + ", ".join(f"{n}: {f:.1%}" for n, f in zip(config.bucket_sizes, fractions, strict=True))
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="", help="folder with beauty.txt; empty: synthetic")
    parser.add_argument("--buckets", default="8,16,32,50", help="bucket lengths")
    parser.add_argument("--loss", default="auto", help=f"one of {losses.LOSS_TYPES}")
    parser.add_argument("--num_negatives", type=int, default=1024, help="sampled losses")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per shape per round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians shown")
    parser.add_argument("--fed_steps", type=int, default=0, help="tf.data-fed steps (0: skip)")
    parser.add_argument("--last_block", default="all", help="all, scored, or both: all,scored")
    args = parser.parse_args(argv)

    w = common.WORKLOADS["beauty"]
    corpus, origin = common.load_corpus("beauty", args.data)
    split = leave_one_out(corpus, w.split_mode)
    bucket_sizes = tuple(int(b) for b in args.buckets.split(","))
    plain = w.input_config()
    bucketed = dataclasses.replace(plain, buckets=bucket_sizes)
    shape = dataclasses.replace(w.shape, num_items=corpus.num_items)
    g = shape.batch
    mesh = sharding.make_mesh()
    print(
        f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; beauty ({origin}): "
        f"{corpus.num_users:,} users, {corpus.num_items:,} items; batch {g}, max_len "
        f"{shape.max_len}, {shape.predictions} slots, mask {plain.mask_prob}, loss {args.loss}"
    )
    instances = input_pipeline.TrainingInstances(corpus, split, bucketed)
    padding_table(instances, g)

    loss_config = losses.LossConfig(type=args.loss, num_negatives=args.num_negatives)
    settings = args.last_block.split(",")
    steps = {}
    for setting in settings:
        built = common.build_step(
            shape,
            mesh,
            hidden_dropout=w.hidden_dropout,
            loss_config=loss_config,
            item_counts=corpus.popularity,
            last_block=setting,
        )
        steps[setting] = [built.step, built.state]
    data = sharding.data_sharded(mesh)

    # One premade batch per shape: an epoch-0 batch of each bucket, and an unbucketed one.
    buckets = instances.batch_buckets(0, g)
    premade = {}
    for k in range(len(bucketed.bucket_sizes)):
        found = np.flatnonzero(buckets == k)
        if len(found):
            rows = instances.local_indices(0, g, first_batch=int(found[0]), num_batches=1)[0]
            premade[k] = instances.materialize(rows, 0, bucket=k)
    flat = input_pipeline.TrainingInstances(corpus, split, plain)
    premade[None] = flat.materialize(flat.local_indices(0, g, num_batches=1)[0], 0)
    premade = {k: {n: jax.device_put(v, data) for n, v in b.items()} for k, b in premade.items()}

    t0 = time.perf_counter()
    for pair in steps.values():  # compile every shape of every setting, untimed
        for batch in premade.values():
            pair[1], _ = pair[0](pair[1], batch)
        jax.block_until_ready(pair[1])
    print(f"# compiled {len(premade)} shapes x {len(steps)} settings in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    times = {(setting, k): [] for setting in steps for k in premade}
    for _ in range(args.rounds):  # interleaved, so that load changes hit every shape alike
        for k, batch in premade.items():
            for setting, pair in steps.items():
                pair[1], seconds, _ = common.timed(
                    lambda st, s, batch=batch, fn=pair[0]: fn(st, batch), pair[1], warmup=0,
                    steps=args.steps,
                )  # fmt: skip
                times[(setting, k)].append(seconds / args.steps)
    rates = {}
    for setting in steps:
        sec = {k: float(np.median(times[(setting, k)])) for k in premade}
        print(f"{'step alone, last_block=' + setting:28s} {'ms/step':>10s} {'seqs/s':>10s}")
        for k, s in sec.items():
            name = "no buckets" if k is None else f"bucket {bucketed.bucket_shape(k)}"
            print(f"{name:28s} {1e3 * s:10.1f} {g / s:10.0f}")
        epoch_seconds = sum(sec[int(k)] for k in buckets)
        flat_rate = g / sec[None]
        rates[setting] = bucket_rate = g * len(buckets) / epoch_seconds
        print(
            f"{'epoch-weighted, buckets':28s} {1e3 * epoch_seconds / len(buckets):10.1f} "
            f"{bucket_rate:10.0f}\n# speed-up with buckets {bucket_rate / flat_rate:.2f}x "
            f"(epoch of {len(buckets)} steps: {len(buckets) / flat_rate * g / 60:.1f} min "
            f"without, {epoch_seconds / 60:.1f} min with; load average "
            f"{os.getloadavg()[0]:.2f})"
        )
    if len(rates) > 1:
        base = rates[settings[0]]
        print("# bucketed sequences/s against last_block=" + settings[0] + ": " + ", ".join(
            f"{k} {v / base:.2f}x" for k, v in rates.items()))  # fmt: skip
    step, state = steps[settings[0]]

    if args.fed_steps:
        fed = {}
        for name, config in (("no buckets", plain), ("buckets", bucketed)):
            source = input_pipeline.TrainingInstances(corpus, split, config).dataset(g)
            batches = sharding.prefetch_to_device(source.as_numpy_iterator(), mesh, size=2)
            state, seconds, _ = common.timed(
                lambda st, s, it=batches: step(st, next(it)), state, warmup=0, steps=args.fed_steps
            )
            fed[name] = g * args.fed_steps / seconds
            print(f"{'tf.data-fed, ' + name:28s} {'':10s} {fed[name]:10.0f}")
        print(
            f"# fed speed-up {fed['buckets'] / fed['no buckets']:.2f}x over {args.fed_steps} steps"
        )


if __name__ == "__main__":
    main()
