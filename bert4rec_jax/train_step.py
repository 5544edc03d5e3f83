"""The train state and the pure, jitted training step.

Imports only jax, flax and optax (no TensorFlow, no ml_collections), so the step benchmark runs
the very step training uses on machines that have neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from bert4rec_jax import losses, models
from bert4rec_jax import sharding as sharding_lib

Batch = dict[str, jax.Array]  # ids [B, N], positions / labels / weights [B, P]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: Any
    opt_state: Any
    # uint32 [2]: key data of the run's base key. Dropout keys are fold_in(base, step), so a
    # resumed run draws exactly the dropout masks an uninterrupted one would.
    rng: jax.Array


def create_train_state(
    model: models.BERT4Rec,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    max_predictions: int,
    seed: int,
) -> TrainState:
    """Initialises the state directly in its (replicated) sharding: nothing lands on host first.

    Args:
      model: the model.
      tx: the optimizer.
      mesh: the mesh to place the state on.
      max_predictions: P, masked positions per example (the shape init traces with).
      seed: parameters and the run's dropout key derive from it.

    Returns:
      The initial state, replicated over the mesh.
    """

    def init(key: jax.Array) -> TrainState:
        init_key, run_key = jax.random.split(key)
        ids = jnp.ones((1, model.config.max_len), jnp.int32)
        positions = jnp.zeros((1, max_predictions), jnp.int32)
        params = model.init({"params": init_key}, ids, positions, train=False)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(run_key),
        )

    key = jax.random.key(seed)
    abstract = jax.eval_shape(init, key)
    shardings = jax.tree.map(lambda _: sharding_lib.replicated(mesh), abstract)
    return jax.jit(init, out_shardings=shardings)(key)


def make_train_step(
    model: models.BERT4Rec, tx: optax.GradientTransformation, schedule: optax.Schedule
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure training step: cloze cross-entropy, gradients, one optimizer update.

    Returns metrics as sums (loss_sum, weight_sum, correct_sum, steps) plus grad_norm and
    learning_rate, so that they can be accumulated on device and averaged only when logged.
    """

    def train_step(state: TrainState, batch: Batch):
        dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            logits = model.apply(
                {"params": params},
                batch["ids"],
                batch["positions"],
                train=True,
                rngs={"dropout": dropout_key},
            )  # [B, P, V]
            sums = losses.masked_cross_entropy(logits, batch["labels"], batch["weights"])
            return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0), sums

        grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        metrics = dict(
            sums,
            grad_norm=optax.tree.norm(grads),
            # The optimizer's update count equals state.step, so this is the rate just applied.
            learning_rate=schedule(state.step),
            steps=jnp.ones((), jnp.float32),
        )
        return new_state, metrics

    return train_step


def jit_train_step(
    train_step: Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]],
    state: TrainState,
    mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """jit with explicit shardings: state replicated and donated, batch split over `data`."""
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, sharding_lib.data_sharded(mesh)),
        out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
        donate_argnums=0,
    )
