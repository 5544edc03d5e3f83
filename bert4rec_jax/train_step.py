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
import numpy as np
import optax

from bert4rec_jax import losses, models
from bert4rec_jax import sharding as sharding_lib

Batch = dict[str, jax.Array]  # ids [B, N], positions / labels / weights [B, P]
# fold_in(dropout key, this) seeds the sampled losses' negatives.
_LOSS_KEY_STREAM = 0x5A3D


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: Any
    opt_state: Any
    # uint32 [2]: key data of the run's base key. Dropout keys are fold_in(base, step), so a
    # resumed run draws exactly the dropout masks an uninterrupted one would.
    rng: jax.Array


def create_train_state(
    model: models.Model,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    max_predictions: int,
    seed: int,
) -> TrainState:
    """Initialises the state directly in its sharding: nothing lands on host first.

    The parameters are drawn at their model shapes whatever the mesh, so every mesh starts from
    the same values; on a mesh with a `model` axis > 1 the item rows are then padded with zeros to
    `sharding.padded_vocab_size` and split over it (see `sharding.state_shardings`).

    Args:
      model: the model.
      tx: the optimizer.
      mesh: the mesh to place the state on.
      max_predictions: P, masked positions per example (the shape init traces with).
      seed: parameters and the run's dropout key derive from it.

    Returns:
      The initial state on the mesh.
    """
    rows = sharding_lib.padded_vocab_size(model.config.vocab_size, mesh)

    def init(key: jax.Array) -> TrainState:
        init_key, run_key = jax.random.split(key)
        ids = jnp.ones((1, model.config.max_len), jnp.int32)
        positions = jnp.zeros((1, max_predictions), jnp.int32)
        params = model.init({"params": init_key}, ids, positions, train=False)["params"]
        params = sharding_lib.fit_item_rows(params, rows)  # the identity when model = 1
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(run_key),
        )

    key = jax.random.key(seed)
    abstract = jax.eval_shape(init, key)
    shardings = sharding_lib.state_shardings(abstract, mesh)
    return jax.jit(init, out_shardings=shardings)(key)


def make_train_step(
    model: models.Model,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    loss_config: losses.LossConfig | None = None,
    item_counts: np.ndarray | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure training step: cloze loss, gradients, one optimizer update.

    Args:
      model: the model.
      tx: the optimizer.
      schedule: the learning-rate schedule (reported in the metrics).
      loss_config: which loss (`config.RunConfig.loss`); None = its defaults.
      item_counts: interactions per item, [num_items + 1] (`Corpus.popularity`) or [vocab_size];
        needed only by the sampled losses' popularity proposal.
      mesh: the mesh the state lives on (`create_train_state`); with a `model` axis > 1 the
        softmax losses combine the item-row shards across it. None = a [data, 1] mesh.

    Returns:
      The step; its metrics are sums (loss_sum, weight_sum, correct_sum, prediction_count,
      steps) plus grad_norm and learning_rate, so that they can be accumulated on device and
      averaged only when logged.
    """
    vocab_size = model.config.vocab_size
    loss_config = loss_config or losses.LossConfig()
    counts = None if item_counts is None else losses.prepare_item_counts(item_counts, vocab_size)
    loss_config.check(vocab_size, counts)  # before anything is compiled
    counts = None if counts is None else jnp.asarray(counts)  # int32 [V]

    def train_step(state: TrainState, batch: Batch):
        dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        # Negatives of the sampled losses: their own stream, so dropout is what it always was.
        loss_key = jax.random.fold_in(dropout_key, _LOSS_KEY_STREAM)

        def loss_fn(params):
            # The model sees its own shapes: a sharded table's padding rows are cut here (the
            # identity on a [data, 1] mesh) and only the loss below scores the padded table.
            model_params = sharding_lib.fit_item_rows(params, vocab_size)
            h = model.apply(
                {"params": model_params},
                batch["ids"],
                batch["positions"],
                train=True,
                rngs={"dropout": dropout_key},
                # [B] user rows; the batch has them only with model.user_features.
                users=batch.get("users"),
                # "scored": the last block only at the predicted positions (the same function).
                last_block_at_positions=model.config.last_block == "scored",
                method=type(model).predict_hidden,
            )  # [B, P, H]: the loss applies the tied output layer itself, chunked if need be
            # [V', H] and [V'], V' = V padded to the model axis; SASRec's bias is zeros.
            table, bias = type(model).output_layer(params)
            sums = losses.cloze_loss(
                loss_config,
                h,
                table,
                bias,
                batch["labels"],
                batch["weights"],
                key=loss_key,
                item_counts=counts,
                vocab_size=vocab_size,  # the table may carry padding rows past it
                mesh=mesh,
            )
            # The weighted mean: normalised by the sum of weights, not by the prediction count.
            # A prediction of weight w (`input.mask_last_weight`) then counts as w predictions,
            # and the loss stays a convex combination of per-prediction losses, so the gradient's
            # scale (and the learning rate's meaning) does not grow with the weights or with the
            # share of weighted rows; only the relative emphasis changes. All 1: the plain mean.
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
    """jit with explicit shardings: the state's own (kept, donated), batch split over `data`."""
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, sharding_lib.data_sharded(mesh)),
        out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
        donate_argnums=0,
    )
