"""Tests for bert4rec_jax.losses (the package): cloze_loss as the config picks it, in real train
steps on 1 and 8 devices."""

import jax
import numpy as np
import pytest
from helpers import small_model

from bert4rec_jax import losses, optimizer, sharding
from bert4rec_jax import train_step as train_step_lib


def _one_train_step(loss_config, num_devices):
    """Parameters and metrics after one real (sharded, jitted) train step with this loss."""
    mesh = sharding.make_mesh(num_devices)
    num_items, batch_size, max_len, num_preds = 40, 16, 12, 3
    model = small_model(num_items + 2, max_len, hidden_size=8, intermediate_size=16)
    schedule = optimizer.make_schedule(1e-2, 0, 10)
    tx = optimizer.make_optimizer(schedule)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, num_items + 1, size=(batch_size, max_len)).astype(np.int32)
    batch = {
        "ids": np.where(np.arange(max_len) < num_preds, model.config.mask_id, ids).astype(np.int32),
        "positions": np.tile(np.arange(num_preds, dtype=np.int32), (batch_size, 1)),
        "labels": ids[:, :num_preds],
        "weights": np.ones((batch_size, num_preds), np.float32),
    }
    counts = np.bincount(ids.ravel(), minlength=num_items + 1)  # Corpus.popularity's layout
    state = train_step_lib.create_train_state(model, tx, mesh, max_predictions=num_preds, seed=0)
    step_fn = train_step_lib.make_train_step(model, tx, schedule, loss_config, item_counts=counts)
    step = train_step_lib.jit_train_step(step_fn, state, mesh)
    state, metrics = step(state, sharding.global_batch(mesh, batch))
    metrics = jax.device_get(metrics)
    assert np.isfinite(metrics["loss_sum"]) and metrics["weight_sum"] == batch_size * num_preds
    return jax.device_get(state.params), metrics


@pytest.mark.slow
def test_chunked_train_step_on_8_devices_equals_full():
    params_full, metrics_full = _one_train_step(losses.LossConfig(type="full"), 8)
    params, metrics = _one_train_step(losses.LossConfig(type="chunked", chunk_size=16), 8)
    for k in ("loss_sum", "correct_sum", "grad_norm"):
        np.testing.assert_allclose(metrics[k], metrics_full[k], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params_full), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss_type, proposal", [("sampled_softmax", "popularity"), ("gbce", "uniform")]
)
def test_sampled_train_steps_run(loss_type, proposal):
    config = losses.LossConfig(type=loss_type, num_negatives=8, proposal=proposal)
    _, metrics = _one_train_step(config, 8)
    assert metrics["grad_norm"] > 0
