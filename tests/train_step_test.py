"""Tests for bert4rec_jax.train_step: the jitted step on 8 devices equals 1, bucketed batches equal
padded ones, the loss goes down."""

import jax
import numpy as np
import pytest
from helpers import small_model, tiny_config

from bert4rec_jax import experiment, models, optimizer
from bert4rec_jax import sharding as sharding_lib
from bert4rec_jax import train_step as train_step_lib
from bert4rec_jax.config import RunConfig
from bert4rec_jax.datasets.corpus import leave_one_out


def _init_and_step(config, corpus, mesh, batch):
    """Initial parameters, parameters after one step on `mesh`, and the step's metrics."""
    run = RunConfig.from_config_dict(config)
    model = models.build_model(run.model, corpus.vocab_size)
    tx, schedule = optimizer.from_train_config(run.train)
    state = train_step_lib.create_train_state(
        model, tx, mesh, max_predictions=config.input.max_predictions, seed=config.seed
    )
    params0 = jax.device_get(state.params)
    step = train_step_lib.jit_train_step(
        train_step_lib.make_train_step(model, tx, schedule), state, mesh
    )
    state, metrics = step(state, sharding_lib.global_batch(mesh, batch))
    return params0, jax.device_get(state.params), jax.device_get(metrics)


def test_one_step_on_8_devices_equals_1_device(tmp_path):
    from bert4rec_jax import input_pipeline

    config = tiny_config(tmp_path, warmup_steps=0)  # so the first step's learning rate is not 0
    run = RunConfig.from_config_dict(config)
    corpus = experiment.load_data(run.data)
    split = leave_one_out(corpus, config.split_mode)
    batch = next(input_pipeline.train_batches(corpus, split, run.input, config.batch_size))
    params0, params1, m1 = _init_and_step(config, corpus, sharding_lib.make_mesh(1), batch)
    _, params8, m8 = _init_and_step(config, corpus, sharding_lib.make_mesh(8), batch)
    loss1 = m1["loss_sum"] / m1["weight_sum"]
    loss8 = m8["loss_sum"] / m8["weight_sum"]
    assert np.isfinite(loss1)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params8), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # The step changed the parameters, so the comparison above compares something.
    pairs = zip(jax.tree.leaves(params0), jax.tree.leaves(params1), strict=True)
    moved = [np.abs(a - b).max() for a, b in pairs]
    assert max(moved) > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss_type, model_axis",
    [("full", 1), ("chunked", 1), ("full", 2), ("chunked", 2), ("sampled_softmax", 1), ("gbce", 1)],
)
def test_loss_of_a_bucketed_batch_equals_the_same_rows_padded(loss_type, model_axis):
    """One real train step (jitted, sharded; model_axis 2 = the vocabulary-parallel losses) on a
    batch of the shortest bucket and on the same rows padded to max_len positions and P slots:
    the same loss, gradient and update (dropout off: its draws depend on the shape)."""
    from helpers import random_corpus

    from bert4rec_jax import cloze, input_pipeline, losses

    corpus = random_corpus(np.arange(60) % 17 + 3, num_items=40, seed=1)
    split = leave_one_out(corpus, "standard")
    config = cloze.InputConfig(
        max_len=16, mask_prob=0.4, max_predictions=6, sliding_step=4, buckets=(4, 8)
    )
    instances = input_pipeline.TrainingInstances(corpus, split, config)
    g = 32
    buckets = instances.batch_buckets(0, g)
    b = int(np.flatnonzero(buckets == 0)[0])  # a batch of the shortest bucket
    indices = instances.local_indices(0, g, first_batch=b, num_batches=1)[0]
    cut = instances.materialize(indices, 0, bucket=0)
    padded = instances.materialize(indices, 0)
    assert cut["ids"].shape == (g, 4) and padded["ids"].shape == (g, 16)
    assert cut["positions"].shape == (g, 2) and padded["positions"].shape == (g, 6)

    model = small_model(
        corpus.vocab_size, 16, num_layers=2, hidden_dropout=0.0, attention_dropout=0.0
    )
    schedule = optimizer.make_schedule(1e-2, 0, 10)
    tx = optimizer.make_optimizer(schedule)
    loss_config = losses.LossConfig(type=loss_type, chunk_size=7, num_negatives=8)
    mesh = sharding_lib.make_mesh(8, model=model_axis)
    step_fn = train_step_lib.make_train_step(
        model, tx, schedule, loss_config, item_counts=corpus.popularity, mesh=mesh
    )
    results = []
    for batch in (cut, padded):
        state = train_step_lib.create_train_state(model, tx, mesh, max_predictions=6, seed=0)
        step = train_step_lib.jit_train_step(step_fn, state, mesh)
        state, metrics = step(state, sharding_lib.global_batch(mesh, batch))
        results.append((jax.device_get(state.params), jax.device_get(metrics)))
    (params_cut, m_cut), (params_pad, m_pad) = results
    assert m_cut["weight_sum"] == m_pad["weight_sum"] > 0
    for key in ("loss_sum", "correct_sum", "grad_norm"):
        np.testing.assert_allclose(m_cut[key], m_pad[key], rtol=2e-5, err_msg=key)
    for a, b in zip(jax.tree.leaves(params_cut), jax.tree.leaves(params_pad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_repeated_steps_on_one_batch_drive_its_loss_down(tmp_path):
    # The default run's check that the train step learns at all (the ML-100K runs, marked
    # `quality`, check how well): the real step, fed one batch again and again, must fit it.
    from bert4rec_jax import input_pipeline

    config = tiny_config(tmp_path, warmup_steps=0, learning_rate=1e-2, num_train_steps=1000)
    run = RunConfig.from_config_dict(config)
    corpus = experiment.load_data(run.data)
    split = leave_one_out(corpus, config.split_mode)
    batch = next(input_pipeline.train_batches(corpus, split, run.input, config.batch_size))
    mesh = sharding_lib.make_mesh(8)
    model = models.build_model(run.model, corpus.vocab_size)
    tx, schedule = optimizer.from_train_config(run.train)
    state = train_step_lib.create_train_state(
        model, tx, mesh, max_predictions=config.input.max_predictions, seed=config.seed
    )
    step = train_step_lib.jit_train_step(
        train_step_lib.make_train_step(model, tx, schedule), state, mesh
    )
    batch = sharding_lib.global_batch(mesh, batch)
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        metrics = jax.device_get(metrics)
        losses.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
    assert losses[-1] < losses[0] - 1.0, losses
