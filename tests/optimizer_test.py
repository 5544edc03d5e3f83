"""Tests for bert4rec_jax.optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import small_model

from bert4rec_jax import optimizer
from bert4rec_jax.config import RunConfig
from configs import default as default_config


def test_schedule_values():
    s = optimizer.make_schedule(1e-3, warmup_steps=100, total_steps=1100)
    np.testing.assert_allclose(s(0), 0.0)
    np.testing.assert_allclose(s(50), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(s(100), 1e-3, rtol=1e-6)  # the peak
    np.testing.assert_allclose(s(600), 5e-4, rtol=1e-6)  # half-way down
    np.testing.assert_allclose(s(1100), 0.0)
    np.testing.assert_allclose(s(5000), 0.0)
    assert jax.jit(s)(jnp.int32(100)).dtype == jnp.float32

    no_warmup = optimizer.make_schedule(1e-3, warmup_steps=0, total_steps=1000)
    np.testing.assert_allclose(no_warmup(0), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(no_warmup(500), 5e-4, rtol=1e-6)

    with pytest.raises(ValueError, match="warmup_steps"):
        optimizer.make_schedule(1e-3, warmup_steps=10, total_steps=5)

    constant = optimizer.make_schedule(1e-3, warmup_steps=100, total_steps=1100, decay="none")
    np.testing.assert_allclose([constant(50), constant(100), constant(1099)], [5e-4, 1e-3, 1e-3],
                               rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="lr_decay='cosine'"):
        optimizer.make_schedule(1e-3, warmup_steps=10, total_steps=50, decay="cosine")


def bert4rec_params():
    model = small_model(12, 6, hidden_size=8, num_layers=2, intermediate_size=256)
    ids = jnp.ones((1, 6), jnp.int32)
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), ids, ids[:, :2], train=False)["params"]
    )


def test_decay_mask_on_bert4rec_params():
    params = bert4rec_params()
    flat = {
        "/".join(str(k.key) for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(optimizer.weight_decay_mask(params))[0]
    }
    assert flat["item_embedding"] and flat["position_embedding"]
    assert flat["layers_0/attention/query/kernel"] and flat["layers_1/intermediate/kernel"]
    assert flat["head_transform/kernel"]
    assert not flat["output_bias"]
    assert not flat["layers_0/attention/query/bias"] and not flat["head_transform/bias"]
    for name in ("embedding_layer_norm", "layers_1/attention_layer_norm", "head_layer_norm"):
        assert not flat[f"{name}/scale"] and not flat[f"{name}/bias"]
    # Every non-decayed leaf is a LayerNorm parameter or a bias; every decayed one has >= 2 dims.
    shapes = dict(zip(flat, jax.tree.leaves(params), strict=True))
    for name, decay in flat.items():
        assert decay == (len(shapes[name].shape) >= 2), name


def numpy_bert_adam(params, grads_seq, lrs, *, b1, b2, eps, wd, decay, clip):
    """BERT's AdamWeightDecayOptimizer after tf.clip_by_global_norm, written out in numpy."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v_ = {k: np.zeros_like(v) for k, v in p.items()}
    for grads, lr in zip(grads_seq, lrs, strict=True):
        norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
        scale = clip / max(norm, clip)
        for k in p:
            g = grads[k] * scale
            m[k] = b1 * m[k] + (1 - b1) * g
            v_[k] = b2 * v_[k] + (1 - b2) * g * g
            update = m[k] / (np.sqrt(v_[k]) + eps)
            if decay[k]:
                update = update + wd * p[k]
            p[k] = p[k] - lr * update
    return p


def test_no_bias_correction_matches_numpy_reference():
    rng = np.random.default_rng(0)
    params = {
        "kernel": rng.normal(size=(3, 4)).astype(np.float32),
        "LayerNorm_0": rng.normal(size=(4,)).astype(np.float32),
        "bias": rng.normal(size=(4,)).astype(np.float32),
    }
    grads_seq = [
        {k: (rng.normal(size=v.shape) * s).astype(np.float32) for k, v in params.items()}
        for s in (0.1, 10.0, 1.0)  # the second step is clipped
    ]
    schedule = optimizer.make_schedule(0.1, warmup_steps=1, total_steps=10)
    tx = optimizer.make_optimizer(
        schedule, weight_decay=0.1, clip_norm=5.0, eps=1e-6, bias_correction=False
    )
    state = tx.init(params)
    p = params
    for grads in grads_seq:
        updates, state = jax.jit(tx.update)(grads, state, p)
        p = optax.apply_updates(p, updates)
    decay = {"kernel": True, "LayerNorm_0": False, "bias": False}
    expected = numpy_bert_adam(
        params, grads_seq, [float(schedule(i)) for i in range(3)],
        b1=0.9, b2=0.999, eps=1e-6, wd=0.1, decay=decay, clip=5.0,
    )  # fmt: skip
    for k in params:
        np.testing.assert_allclose(p[k], expected[k], rtol=1e-5, atol=1e-6)


def test_bias_correction_matches_optax_adamw():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}
    grads = {"w": jnp.full((2, 3), 0.3), "bias": jnp.full(3, -0.2)}
    ours = optimizer.make_optimizer(1e-2, weight_decay=0.05, clip_norm=0.0, eps=1e-6)
    mask = optimizer.weight_decay_mask
    ref = optax.adamw(1e-2, eps=1e-6, weight_decay=0.05, mask=mask)
    s1, s2 = ours.init(params), ref.init(params)
    for _ in range(2):
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = ref.update(grads, s2, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)


def test_clipping_caps_global_norm():
    params = {"a": jnp.zeros((4,)), "b": jnp.zeros((2, 2))}
    grads = {"a": jnp.full((4,), 30.0), "b": jnp.full((2, 2), -40.0)}  # norm 100
    tx = optimizer.make_optimizer(1e-3, clip_norm=5.0, bias_correction=False)
    _, state = tx.update(grads, tx.init(params), params)
    adam_state = state[1]  # after clip_by_global_norm
    clipped = jax.tree.map(lambda m: m / 0.1, adam_state.mu)  # mu = (1 - b1) * clipped grads
    np.testing.assert_allclose(optax.tree.norm(clipped), 5.0, rtol=1e-5)
    np.testing.assert_allclose(clipped["a"], 30.0 / 20.0, rtol=1e-5)  # direction kept

    small = jax.tree.map(lambda g: g / 1000.0, grads)  # norm 0.1: left alone
    _, state = tx.update(small, tx.init(params), params)
    np.testing.assert_allclose(optax.tree.norm(state[1].mu) / 0.1, 0.1, rtol=1e-5)


def test_from_config():
    config = default_config.get_config()
    tx, schedule = optimizer.from_train_config(RunConfig.from_config_dict(config).train)
    np.testing.assert_allclose(schedule(config.warmup_steps), config.learning_rate, rtol=1e-6)
    np.testing.assert_allclose(schedule(config.num_train_steps), 0.0)
    params = bert4rec_params()
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
