"""The [data, model] mesh: its config checks, and a vocabulary-parallel item table (rows split over
`model`) giving the same loss, gradients, metrics and checkpoints as a replicated one."""

import dataclasses
import re

import jax
import numpy as np
import optax
import pytest
from helpers import small_model, tiny_config

from bert4rec_jax import checkpointing, experiment, losses, models, train_lib
from bert4rec_jax import sharding as sharding_lib
from bert4rec_jax import train_step as train_step_lib
from bert4rec_jax.checkpointing import LoopState
from bert4rec_jax.config import RunConfig

NUM_ITEMS = 21  # V = 23: odd, so a model axis of 2 pads the table to 24 rows
VOCAB = NUM_ITEMS + 2


@pytest.mark.parametrize(
    "data, model, field",
    [
        (3, 2, "mesh.data=3"),  # 6 devices, 8 visible
        (0, 3, "mesh.model=3"),  # does not divide 8
        (0, 0, "mesh.model=0"),
        (-1, 1, "mesh.data=-1"),
    ],
)
def test_bad_mesh_shape_names_the_field(data, model, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        sharding_lib.make_mesh(data=data, model=model)


def test_bad_mesh_in_the_config_fails_before_anything_is_built(tmp_path):
    config = tiny_config(tmp_path, **{"mesh.model": 3})
    with pytest.raises(ValueError, match=re.escape("mesh.model=3")):
        train_lib.train_and_evaluate(config, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


def test_mesh_from_config_shapes_and_item_row_layout(tmp_path):
    mesh = RunConfig.from_config_dict(tiny_config(tmp_path, **{"mesh.model": 2})).mesh.make_mesh()
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    assert sharding_lib.padded_vocab_size(VOCAB, mesh) == 24
    # The default config keeps today's [all devices, 1] mesh, in jax.devices() order.
    default = RunConfig.from_config_dict(tiny_config(tmp_path)).mesh.make_mesh()
    assert dict(default.shape) == {"data": 8, "model": 1}
    assert list(default.devices.ravel()) == jax.devices()


def _model(**overrides) -> models.BERT4Rec:
    # No dropout: both meshes must compute the very same function.
    fields = {"hidden_dropout": 0.0, "attention_dropout": 0.0} | overrides
    return small_model(VOCAB, 8, hidden_size=8, intermediate_size=16, **fields)


def _batch(model, params, batch_size=8, num_predictions=3):
    """A cloze batch whose labels are, at every other position, the model's own best item, so
    that accuracy is not trivially 0."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, NUM_ITEMS + 1, size=(batch_size, 8)).astype(np.int32)
    positions = np.stack([rng.permutation(8)[:num_predictions] for _ in range(batch_size)])
    ids[np.arange(batch_size)[:, None], positions] = VOCAB - 1  # [MASK]
    # jit: one compilation instead of one per operation.
    logits = jax.jit(lambda p: model.apply({"params": p}, ids, positions, train=False))(params)
    best = np.asarray(np.argmax(logits, axis=-1))
    random_labels = rng.integers(1, NUM_ITEMS + 1, size=best.shape)
    labels = np.where(np.arange(num_predictions) % 2 == 0, best, random_labels)
    weights = np.ones(labels.shape, np.float32)
    weights[0, -1] = 0.0  # a padded prediction slot
    return {
        "ids": ids,
        "positions": positions.astype(np.int32),
        "labels": labels.astype(np.int32),
        "weights": weights,
    }


def _one_sgd_step(model, mesh, loss_config, batch):
    """(metrics, gradient of every parameter at the model's shapes) of one step on `mesh`."""
    tx = optax.sgd(1.0)  # new params = params - grads
    state = train_step_lib.create_train_state(model, tx, mesh, max_predictions=3, seed=0)
    before = jax.device_get(sharding_lib.fit_item_rows(state.params, VOCAB))
    step = train_step_lib.jit_train_step(
        train_step_lib.make_train_step(
            model, tx, optax.constant_schedule(1.0), loss_config, mesh=mesh
        ),
        state,
        mesh,
    )
    state, metrics = step(state, sharding_lib.global_batch(mesh, batch))
    rows = sharding_lib.padded_vocab_size(VOCAB, mesh)
    assert state.params["item_embedding"].shape == (rows, 8)
    padding = np.asarray(state.params["output_bias"])[VOCAB:]
    assert not padding.any()  # padding rows get no gradient: never scored
    after = jax.device_get(sharding_lib.fit_item_rows(state.params, VOCAB))
    grads = jax.tree.map(lambda a, b: a - b, before, after)
    return jax.device_get(metrics), grads, state


@pytest.mark.slow
def test_vocab_parallel_step_equals_data_parallel():
    # The whole train step, chunked loss: 12 rows per shard give chunks 5, 5, 2 (the last one
    # with the padding row); the unsharded 23 rows give 5 x 4, 3.
    model = _model()
    loss_config = losses.LossConfig(type="chunked", chunk_size=5)
    params = train_step_lib.create_train_state(  # what the steps below start from
        model, optax.sgd(1.0), sharding_lib.make_mesh(1), max_predictions=3, seed=0
    ).params
    batch = _batch(model, params)
    m_dp, g_dp, _ = _one_sgd_step(model, sharding_lib.make_mesh(data=8), loss_config, batch)
    m_vp, g_vp, state = _one_sgd_step(
        model, sharding_lib.make_mesh(data=4, model=2), loss_config, batch
    )
    spec = state.params["item_embedding"].sharding.spec
    assert tuple(spec)[:1] == ("model",)  # the table really is split
    assert m_dp["correct_sum"] > 0  # accuracy is compared on something
    for name in ("loss_sum", "weight_sum", "correct_sum", "grad_norm"):
        np.testing.assert_allclose(m_vp[name], m_dp[name], rtol=1e-5, atol=1e-5, err_msg=name)
    flat_dp = jax.tree_util.tree_flatten_with_path(g_dp)[0]
    flat_vp = jax.tree.leaves(g_vp)
    assert len(flat_dp) == len(flat_vp)
    for (path, a), b in zip(flat_dp, flat_vp, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    assert np.abs(g_dp["item_embedding"]).max() > 1e-4  # the gradients compared are not all 0


@pytest.mark.parametrize("loss_type", ["full", "chunked", "sampled_softmax"])
def test_vocab_parallel_loss_and_gradients_equal_unsharded(loss_type):
    # The loss alone (cheap to compile): its gradients with respect to the head features, the
    # table and the bias carry every parameter's gradient (the step test above checks that).
    rng = np.random.default_rng(0)
    h = rng.normal(size=(8, 3, 4)).astype(np.float32)  # [B, P, H]
    table = rng.normal(size=(VOCAB, 4)).astype(np.float32)
    bias = rng.normal(size=(VOCAB,)).astype(np.float32)
    best = np.argmax(np.einsum("bph,vh->bpv", h, table) + bias, axis=-1)
    labels = np.where(
        rng.random(best.shape) < 0.5, best, rng.integers(1, NUM_ITEMS + 1, best.shape)
    )
    weights = (rng.random(best.shape) < 0.8).astype(np.float32)
    config = losses.LossConfig(type=loss_type, chunk_size=5, num_negatives=7)
    key = jax.random.key(0)

    def sums_and_grads(mesh, h, table, bias):
        def loss(h, table, bias):
            sums = losses.cloze_loss(
                config, h, table, bias, labels, weights, key=key, vocab_size=VOCAB, mesh=mesh
            )
            return sums["loss_sum"], sums

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(h, table, bias)

    grads, sums = sums_and_grads(None, h, table, bias)
    mesh = sharding_lib.make_mesh(data=4, model=2)
    rows = {"item_embedding": table, "output_bias": bias}
    rows = sharding_lib.place_params(rows, mesh, VOCAB)  # 24 rows, split over model
    h_split = jax.device_put(h, sharding_lib.data_sharded(mesh))
    grads_vp, sums_vp = sums_and_grads(mesh, h_split, rows["item_embedding"], rows["output_bias"])
    if loss_type != "sampled_softmax":
        assert sums["correct_sum"] > 0
    for name in sums:
        np.testing.assert_allclose(sums_vp[name], sums[name], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, grads_vp, strict=True):
        np.testing.assert_allclose(np.asarray(b)[: len(a)], a, rtol=1e-5, atol=1e-5)
    assert not np.asarray(grads_vp[1])[VOCAB:].any()  # the padding row is never scored


@pytest.mark.slow
def test_evaluation_metrics_equal_on_a_split_table(tmp_path):
    config = tiny_config(tmp_path, **{"synthetic.num_items": 61, "eval.item_chunk": 16})
    # V = 63: padded to 64 on model = 2
    exp = experiment.Experiment.from_run(RunConfig.from_config_dict(config))
    tx = optax.sgd(1.0)
    state = train_step_lib.create_train_state(
        exp.model, tx, sharding_lib.make_mesh(), max_predictions=5, seed=3
    )
    params = jax.device_get(state.params)
    results = {}
    for shape in ((8, 1), (4, 2)):
        mesh = sharding_lib.make_mesh(data=shape[0], model=shape[1])
        results[shape] = exp.evaluator(mesh).evaluate(params, "valid")
    assert set(results[(8, 1)]) == set(results[(4, 2)])
    assert any(k.startswith("full/") for k in results[(8, 1)])
    for key, value in results[(8, 1)].items():
        assert results[(4, 2)][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_checkpoint_restores_across_mesh_shapes(tmp_path):
    model = _model()
    tx = optax.adam(1e-2)
    mesh_vp = sharding_lib.make_mesh(data=4, model=2)
    mesh_dp = sharding_lib.make_mesh(data=8, model=1)

    def trained_state(mesh):
        # Parameters and Adam moments that are not their initial values (one eager update).
        state = train_step_lib.create_train_state(model, tx, mesh, max_predictions=3, seed=0)

        def update(state):
            grads = jax.tree.map(lambda x: x + 0.5, state.params)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return state.replace(params=params, opt_state=opt_state)

        return jax.jit(update)(state)

    def unpadded(tree):
        return jax.device_get(sharding_lib.fit_item_rows(tree, VOCAB))

    def assert_same(a, b):
        for x, y in zip(jax.tree.leaves(unpadded(a)), jax.tree.leaves(unpadded(b)), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # Saved on data 4 x model 2 (24 item rows), restored on data 8 x model 1 (23 rows) ...
    saved = trained_state(mesh_vp)
    ckpt = checkpointing.Checkpointer(tmp_path / "a", keep=2, use_async=False)
    ckpt.save(1, saved, LoopState(best_score=0.5, best_step=1))
    ckpt.save_best(1, saved.params, 0.5)
    target = train_step_lib.create_train_state(model, tx, mesh_dp, max_predictions=3, seed=7)
    restored, loop = ckpt.restore_latest(target, vocab_size=VOCAB)
    assert loop.best_step == 1
    assert restored.params["item_embedding"].shape == (VOCAB, 8)
    assert_same(restored, saved)
    assert_same(ckpt.restore_best(target.params, vocab_size=VOCAB), saved.params)
    ckpt.close()
    # ... as evaluate and export read it: on one device, at the model's shapes.
    params, step = checkpointing.restore_params(tmp_path / "a", "best", vocab_size=VOCAB)
    assert step == 1 and params["output_bias"].shape == (VOCAB,)
    assert_same(params, saved.params)

    # And back: saved on data 8 x model 1, restored split over model 2 with zero padding.
    ckpt = checkpointing.Checkpointer(tmp_path / "b", keep=2, use_async=False)
    ckpt.save(2, restored, loop)
    target = train_step_lib.create_train_state(model, tx, mesh_vp, max_predictions=3, seed=7)
    back, _ = ckpt.restore_latest(target, vocab_size=VOCAB)
    ckpt.close()
    assert back.params["item_embedding"].shape == (24, 8)
    assert back.params["item_embedding"].sharding == target.params["item_embedding"].sharding
    assert not np.asarray(back.params["item_embedding"])[VOCAB:].any()
    assert_same(back, saved)

    # Rows beyond the padding of a mesh are another vocabulary: still refused, nothing moved.
    bigger = models.BERT4Rec(dataclasses.replace(model.config, vocab_size=VOCAB + 4))
    target = jax.eval_shape(
        lambda: train_step_lib.create_train_state(bigger, tx, mesh_vp, max_predictions=3, seed=0)
    )
    ckpt = checkpointing.Checkpointer(tmp_path / "a", keep=2, use_async=False)
    with pytest.raises(checkpointing.CheckpointError, match="item_embedding"):
        ckpt.restore_latest(target, vocab_size=VOCAB + 4)
    ckpt.close()
