"""The project's train step against a minimal from-scratch one, interleaved in one run.

    XLA_FLAGS=--xla_force_host_platform_device_count=1 python benchmarks/reference_step.py
    XLA_FLAGS=--xla_force_host_platform_device_count=1 python benchmarks/reference_step.py \
        --kind=sasrec

The reference is the floor the project's step is held to: BERT4Rec written plainly in Flax (item
+ position embeddings, post-LayerNorm blocks of multi-head attention with a padding mask and a
GELU feed-forward, dropout (each attention probability on its own, as in BERT), the output head
at the masked positions only with the item table tied), the weighted cloze cross-entropy over
the full catalogue, gradients and one `optax.adamw` update, in one jitted function with the
state donated. Nothing else: no clipping, no weight-decay mask, no metrics beyond the loss.

The project's step is `bert4rec_jax.train_step` as training runs it (clip + Adam + masked
weight decay, the loss chosen by `loss.type`, metric sums, the state's dropout key by fold_in).
Both see the same synthetic batch at the ML-1m paper shape (batch 256, 200 positions, 40 slots,
3,416 items, d 64, 2 layers, 2 heads) unless told otherwise; rounds alternate the two, so that
the machine's load hits both alike. Printed: XLA's cost analysis of both compiled steps
(flops, bytes accessed, temporaries: deterministic, unlike timings on a shared CPU), ms/step per
round and the median ratio.

`--kind=sasrec`: the reference is SASRec written plainly (the item embedding times sqrt(d) plus a
position counted from the end, dropout, blocks of a query-only LayerNorm, causal attention
without an output projection and a ReLU d x d feed-forward, a final LayerNorm), the next item
predicted at every position with the full softmax over the input table, and `optax.adam`; the
project's is `model.kind="sasrec"` with `loss.type="full"` on the same next-item batch.

`--last_block=scored` runs the project's step with `model.last_block="scored"` (the last block at
the predicted positions only); the reference still computes the last block everywhere, so the
ratio of the two runs' ratios is that switch's speed-up at this shape.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks import common  # noqa: E402
from bert4rec_jax import sharding  # noqa: E402


class _Block(nn.Module):
    hidden: int
    heads: int
    dropout: float

    @nn.compact
    def __call__(self, x, mask, train):  # x [B, N, H], mask [B, 1, N, N]
        init = nn.initializers.truncated_normal(0.02)
        # broadcast_dropout=False: BERT drops each attention probability on its own. flax's
        # default shares one [N, N] mask across the batch and the heads, a different (and, with
        # B * heads = 512 times fewer random bits, cheaper) regulariser than the model's; with it
        # this "reference" was 16% fewer bytes than the project's step and 1.29x faster.
        a = nn.MultiHeadDotProductAttention(
            num_heads=self.heads, kernel_init=init, dropout_rate=self.dropout,
            broadcast_dropout=False,
        )(x, x, mask=mask, deterministic=not train)  # fmt: skip
        x = nn.LayerNorm(epsilon=1e-12)(x + nn.Dropout(self.dropout)(a, deterministic=not train))
        f = nn.Dense(4 * self.hidden, kernel_init=init)(x)
        f = nn.Dense(self.hidden, kernel_init=init)(nn.gelu(f, approximate=False))
        return nn.LayerNorm(epsilon=1e-12)(x + nn.Dropout(self.dropout)(f, deterministic=not train))


class Reference(nn.Module):
    vocab: int
    max_len: int
    hidden: int
    layers: int
    heads: int
    dropout: float

    @nn.compact
    def __call__(self, ids, positions, train):  # [B, N], [B, P] -> logits [B, P, V]
        init = nn.initializers.truncated_normal(0.02)
        table = self.param("items", init, (self.vocab, self.hidden))
        pos = self.param("positions", init, (self.max_len, self.hidden))
        x = table[ids] + pos[: ids.shape[1]]
        x = nn.Dropout(self.dropout)(nn.LayerNorm(epsilon=1e-12)(x), deterministic=not train)
        mask = nn.make_attention_mask(ids > 0, ids > 0)  # [B, 1, N, N]
        for _ in range(self.layers):
            x = _Block(self.hidden, self.heads, self.dropout)(x, mask, train)
        h = jnp.take_along_axis(x, positions[..., None], axis=1)  # [B, P, H]
        h = nn.LayerNorm(epsilon=1e-12)(nn.gelu(nn.Dense(self.hidden, kernel_init=init)(h)))
        bias = self.param("bias", nn.initializers.zeros, (self.vocab,))
        return h @ table.T + bias


class _SASRecBlock(nn.Module):
    hidden: int
    heads: int
    dropout: float

    @nn.compact
    def __call__(self, x, keep, mask, train):  # x [B, N, H], keep [B, N, 1], mask [B, 1, N, N]
        init = nn.initializers.glorot_uniform()
        b, n, _ = x.shape
        q_in = nn.LayerNorm(epsilon=1e-8)(x)
        split = lambda y: y.reshape(b, n, self.heads, self.hidden // self.heads)
        q = split(nn.Dense(self.hidden, kernel_init=init)(q_in))
        k = split(nn.Dense(self.hidden, kernel_init=init)(x))
        v = split(nn.Dense(self.hidden, kernel_init=init)(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(self.hidden // self.heads)
        probs = jax.nn.softmax(jnp.where(mask, logits, -1e30), axis=-1)
        probs = nn.Dropout(self.dropout)(probs, deterministic=not train)
        y = q_in + jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, self.hidden)
        f = nn.LayerNorm(epsilon=1e-8)(y)
        h = nn.Dropout(self.dropout)(nn.relu(nn.Dense(self.hidden, kernel_init=init)(f)),
                                     deterministic=not train)  # fmt: skip
        h = nn.Dropout(self.dropout)(nn.Dense(self.hidden, kernel_init=init)(h),
                                     deterministic=not train)  # fmt: skip
        return (f + h) * keep


class SASRecReference(nn.Module):
    vocab: int
    max_len: int
    hidden: int
    layers: int
    heads: int
    dropout: float

    @nn.compact
    def __call__(self, ids, positions, train):  # [B, N] -> logits [B, N, V] (every position)
        del positions
        init = nn.initializers.glorot_uniform()
        table = self.param("items", init, (self.vocab, self.hidden))
        pos = self.param("positions", init, (self.max_len, self.hidden))
        valid = ids > 0
        n = ids.shape[1]
        index = self.max_len - valid.sum(1, keepdims=True) + jnp.arange(n)  # from the end
        x = table[ids] * np.sqrt(self.hidden) + pos[jnp.clip(index, 0, self.max_len - 1)]
        keep = valid[..., None].astype(x.dtype)
        x = nn.Dropout(self.dropout)(x, deterministic=not train) * keep
        # [B, 1, N, N]; flax builds float masks by default, so ask for booleans to combine.
        padding = nn.make_attention_mask(valid, valid, dtype=bool)
        mask = padding & nn.make_causal_mask(ids, dtype=bool)
        for _ in range(self.layers):
            x = _SASRecBlock(self.hidden, self.heads, self.dropout)(x, keep, mask, train)
        return nn.LayerNorm(epsilon=1e-8)(x) @ table.T


def reference_step(shape: common.Shape, dropout: float, kind: str = "bert4rec"):
    module = Reference if kind == "bert4rec" else SASRecReference
    model = module(shape.num_items + 2, shape.max_len, shape.hidden, shape.layers, shape.heads,
                   dropout)  # fmt: skip
    if kind == "bert4rec":
        tx = optax.adamw(1e-3, eps=1e-6, weight_decay=0.01)
    else:
        tx = optax.adam(1e-3, b2=0.98)
    predictions = shape.predictions if kind == "bert4rec" else shape.max_len

    def init(key):
        ids = jnp.ones((1, shape.max_len), jnp.int32)
        params = model.init(key, ids, jnp.zeros((1, predictions), jnp.int32), False)
        return params, tx.init(params), jnp.zeros((), jnp.int32)

    def step(state, batch, key):
        params, opt_state, t = state

        def loss_fn(params):
            logits = model.apply(params, batch["ids"], batch["positions"], True,
                                 rngs={"dropout": jax.random.fold_in(key, t)})  # fmt: skip
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
            return (nll * batch["weights"]).sum() / jnp.maximum(batch["weights"].sum(), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, t + 1), loss

    return jax.jit(init)(jax.random.key(0)), jax.jit(step, donate_argnums=0)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="ml-1m", help=f"from {sorted(common.SHAPES)}")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kind", default="bert4rec", choices=["bert4rec", "sasrec"])
    parser.add_argument(
        "--last_block",
        default="all",
        choices=["all", "scored"],
        help="the project's model.last_block (the reference computes all rows)",
    )
    args = parser.parse_args(argv)
    shape = common.SHAPES[args.shape]
    mesh = sharding.make_mesh()
    print(f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, shape "
          f"{args.shape} {shape}, load average {os.getloadavg()[0]:.2f}")  # fmt: skip

    if args.kind == "bert4rec":
        built = common.build_step(shape, mesh, last_block=args.last_block)
    else:  # the full softmax, as the reference computes it
        from bert4rec_jax import losses

        built = common.build_step(shape, mesh, kind="sasrec", last_block=args.last_block,
                                  loss_config=losses.LossConfig(type="full"))  # fmt: skip
    project, pstate = built.step, built.state
    pbatch = common.device_batch(shape, mesh, kind=args.kind)
    rstate, rstep = reference_step(shape, 0.2, args.kind)
    rbatch = {k: jnp.asarray(v) for k, v in common.batch_of(args.kind, shape).items()}
    key = jax.random.key(1)
    # XLA's own count of the work, deterministic whatever the load: on CPU the step is mostly
    # memory traffic, so "bytes accessed" is the proxy to cut first.
    for name, compiled in (
        ("project", project.lower(pstate, pbatch).compile()),
        ("reference", rstep.lower(rstate, rbatch, key).compile()),
    ):
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        print(f"{name:9s} XLA cost: {cost.get('flops', 0) / 1e9:.1f} GFLOP, "
              f"{cost.get('bytes accessed', 0) / 1e9:.2f} GB accessed, temporaries "
              f"{compiled.memory_analysis().temp_size_in_bytes / 2**20:.0f} MiB")  # fmt: skip
    pstate, _ = project(pstate, pbatch)  # compile both, untimed
    rstate, _ = rstep(rstate, rbatch, key)
    jax.block_until_ready((pstate, rstate))
    times = {"project": [], "reference": []}
    for r in range(args.rounds):
        pstate, seconds, _ = common.timed(
            lambda st, s: project(st, pbatch), pstate, warmup=0, steps=args.steps
        )
        times["project"].append(1e3 * seconds / args.steps)
        rstate, seconds, _ = common.timed(
            lambda st, s: rstep(st, rbatch, key), rstate, warmup=0, steps=args.steps
        )
        times["reference"].append(1e3 * seconds / args.steps)
        print(f"round {r}: project {times['project'][-1]:.0f} ms, reference "
              f"{times['reference'][-1]:.0f} ms", flush=True)  # fmt: skip
    p, q = np.median(times["project"]), np.median(times["reference"])
    print(f"median: project {p:.0f} ms/step, reference {q:.0f} ms/step, ratio {p / q:.2f}x "
          f"(load average {os.getloadavg()[0]:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
