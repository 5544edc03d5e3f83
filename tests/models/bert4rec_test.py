"""Tests for bert4rec_jax.models on tiny shapes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_corpus

from bert4rec_jax import cloze, device_input, input_pipeline, losses, models, optimizer, scoring
from bert4rec_jax import sharding as sharding_lib
from bert4rec_jax import train_step as train_step_lib
from bert4rec_jax.config import RunConfig
from bert4rec_jax.datasets.corpus import Corpus, leave_one_out
from configs import default as default_config

NUM_ITEMS = 10
VOCAB = NUM_ITEMS + 2
MASK = VOCAB - 1


def model_config(**overrides) -> models.ModelConfig:
    """A small ModelConfig for IDS (not an experiment config: that is helpers.tiny_config)."""
    kw = dict(
        vocab_size=VOCAB,
        max_len=12,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        intermediate_size=32,
        hidden_dropout=0.2,
        attention_dropout=0.2,
    )
    kw.update(overrides)
    return models.ModelConfig(**kw)


# Right-padded histories with [MASK]s, as the input pipeline produces them.
IDS = np.array(
    [
        [3, MASK, 5, 9, 2, MASK, 0, 0],
        [1, 2, 3, 4, 5, 6, 7, MASK],
        [MASK, 0, 0, 0, 0, 0, 0, 0],
    ],
    np.int32,
)
POSITIONS = np.array([[1, 5, 0], [7, 0, 0], [0, 0, 0]], np.int32)


@pytest.fixture(scope="module")
def model_and_vars():
    model = models.BERT4Rec(model_config())
    variables = model.init(jax.random.key(0), IDS, POSITIONS, train=False)
    return model, variables


def test_shapes_and_dtypes(model_and_vars):
    model, variables = model_and_vars
    b, n = IDS.shape
    p = POSITIONS.shape[1]
    hidden = model.apply(variables, IDS, train=False, method=model.encode)
    assert hidden.shape == (b, n, 16)
    h = model.apply(variables, IDS, POSITIONS, train=False, method=model.predict_hidden)
    assert h.shape == (b, p, 16)
    logits = model.apply(variables, IDS, POSITIONS, train=False)
    assert logits.shape == (b, p, VOCAB) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    params = variables["params"]
    assert params["item_embedding"].shape == (VOCAB, 16)
    assert params["position_embedding"].shape == (12, 16)
    assert params["output_bias"].shape == (VOCAB,)
    assert set(params) >= {"layers_0", "layers_1", "head_transform", "head_layer_norm"}


def test_init_is_truncated_normal_without_rescaling():
    cfg = model_config(vocab_size=4000, init_std=0.05)
    model = models.BERT4Rec(cfg)
    params = model.init(jax.random.key(1), IDS, POSITIONS, train=False)["params"]
    table = np.asarray(params["item_embedding"])
    assert np.abs(table).max() <= 2 * 0.05 + 1e-7
    # A N(0, 1) cut at +-2 has std 0.8796; flax (like TF) does not rescale it.
    np.testing.assert_allclose(table.std(), 0.8796 * 0.05, rtol=0.03)
    assert np.all(params["output_bias"] == 0)
    assert np.all(params["layers_0"]["intermediate"]["bias"] == 0)
    assert np.all(params["layers_0"]["attention_layer_norm"]["scale"] == 1)


def test_padding_invariance(model_and_vars):
    model, variables = model_and_vars
    padded = np.pad(IDS, ((0, 0), (0, 4)))  # 4 more padding tokens at the end
    n = IDS.shape[1]
    h1 = model.apply(variables, IDS, train=False, method=model.encode)
    h2 = model.apply(variables, padded, train=False, method=model.encode)
    real = IDS != 0
    np.testing.assert_allclose(np.asarray(h1)[real], np.asarray(h2)[:, :n][real], atol=1e-5)
    l1 = model.apply(variables, IDS, POSITIONS, train=False)
    l2 = model.apply(variables, padded, POSITIONS, train=False)
    np.testing.assert_allclose(l1, l2, atol=1e-5)


def test_manual_attention_matches_dot_product_attention(model_and_vars):
    model, variables = model_and_vars
    manual = models.BERT4Rec(dataclasses.replace(model.config, attention_impl="manual"))
    xla = models.BERT4Rec(dataclasses.replace(model.config, attention_impl="xla"))
    ref = model.apply(variables, IDS, POSITIONS, train=False)
    np.testing.assert_allclose(manual.apply(variables, IDS, POSITIONS, train=False), ref, atol=1e-5)
    np.testing.assert_allclose(xla.apply(variables, IDS, POSITIONS, train=False), ref, atol=1e-5)


def test_cudnn_gets_a_full_boolean_mask_and_bfloat16(model_and_vars, monkeypatch):
    # No GPU here: record what the cuDNN path would be given and run it through XLA instead.
    model, variables = model_and_vars
    calls = []
    real = jax.nn.dot_product_attention

    def fake(q, k, v, *, mask, implementation):
        calls.append((q.dtype, mask.dtype, mask.shape, implementation))
        return real(q, k, v, mask=mask, implementation="xla")

    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    cudnn = models.BERT4Rec(
        dataclasses.replace(model.config, dtype=jnp.bfloat16, attention_impl="cudnn")
    )
    cudnn.apply(variables, IDS, POSITIONS, train=False)
    b, n = IDS.shape
    assert calls == [(jnp.bfloat16, jnp.bool_, (b, 1, n, n), "cudnn")] * 2
    with pytest.raises(ValueError, match="bfloat16"):
        dataclasses.replace(model.config, attention_impl="cudnn")


def test_dropout_only_in_training(model_and_vars):
    model, variables = model_and_vars
    apply = lambda train, seed: model.apply(
        variables, IDS, POSITIONS, train=train, rngs={"dropout": jax.random.key(seed)}
    )
    eval_out = model.apply(variables, IDS, POSITIONS, train=False)  # needs no rng
    np.testing.assert_array_equal(apply(False, 1), eval_out)
    np.testing.assert_array_equal(apply(False, 2), eval_out)
    np.testing.assert_array_equal(apply(True, 1), apply(True, 1))  # deterministic per rng
    assert not np.allclose(apply(True, 1), apply(True, 2))
    assert not np.allclose(apply(True, 1), eval_out)


def test_attention_dropout_alone_changes_training_outputs(model_and_vars):
    model, variables = model_and_vars
    only_attn = models.BERT4Rec(dataclasses.replace(model.config, hidden_dropout=0.0))
    no_dropout = models.BERT4Rec(
        dataclasses.replace(model.config, hidden_dropout=0.0, attention_dropout=0.0)
    )
    rngs = {"dropout": jax.random.key(3)}
    eval_out = only_attn.apply(variables, IDS, POSITIONS, train=False)
    np.testing.assert_allclose(
        no_dropout.apply(variables, IDS, POSITIONS, train=True, rngs=rngs), eval_out, atol=1e-6
    )
    assert not np.allclose(only_attn.apply(variables, IDS, POSITIONS, train=True, rngs=rngs),
                           eval_out)  # fmt: skip


def test_logits_use_tied_embeddings(model_and_vars):
    model, variables = model_and_vars
    params = variables["params"]
    h = model.apply(variables, IDS, POSITIONS, train=False, method=model.predict_hidden)
    expected = np.asarray(h) @ np.asarray(params["item_embedding"]).T + params["output_bias"]
    logits = model.apply(variables, IDS, POSITIONS, train=False)
    np.testing.assert_allclose(logits, expected, atol=1e-5)

    # The output layer really reads the embedding table: changing a row changes that column only.
    table = params["item_embedding"].at[4].add(1.0)
    bumped = {"params": {**params, "item_embedding": table}}
    h2 = model.apply(bumped, IDS, POSITIONS, train=False, method=model.predict_hidden)
    scores = model.apply(bumped, h2, method=model.item_scores)
    np.testing.assert_allclose(
        scores, np.asarray(h2) @ np.asarray(table).T + params["output_bias"], atol=1e-5
    )


def test_item_scores_agree_with_full_logits(model_and_vars):
    model, variables = model_and_vars
    logits = np.asarray(model.apply(variables, IDS, POSITIONS, train=False))  # [B, P, V]
    h = model.apply(variables, IDS, POSITIONS, train=False, method=model.predict_hidden)
    b = IDS.shape[0]
    shared = jnp.array([7, 1, 10, 3])  # [C]
    scores = model.apply(variables, h, shared, method=model.item_scores)
    np.testing.assert_allclose(scores, logits[:, :, shared], atol=1e-5)
    scores = model.apply(variables, h[:, 0], shared, method=model.item_scores)  # [B, C]
    np.testing.assert_allclose(scores, logits[:, 0][:, shared], atol=1e-5)

    per_row = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 1, 1]])  # [B, C]
    rows = np.arange(b)[:, None]
    scores = model.apply(variables, h[:, 0], per_row, method=model.item_scores)
    np.testing.assert_allclose(scores, logits[:, 0][rows, per_row], atol=1e-5)
    scores = model.apply(variables, h, per_row, method=model.item_scores)  # [B, P, C]
    np.testing.assert_allclose(
        scores, np.take_along_axis(logits, np.asarray(per_row)[:, None, :], -1), atol=1e-5
    )


def test_bfloat16_model(model_and_vars):
    model32, variables32 = model_and_vars
    model = models.BERT4Rec(dataclasses.replace(model32.config, dtype=jnp.bfloat16))
    variables = model.init(jax.random.key(0), IDS, POSITIONS, train=False)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    hidden = model.apply(variables, IDS, train=False, method=model.encode)
    assert hidden.dtype == jnp.bfloat16
    logits = model.apply(
        variables32, IDS, POSITIONS, train=True, rngs={"dropout": jax.random.key(0)}
    )
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    # Same parameters, both precisions: close (the logits are small at init).
    np.testing.assert_allclose(
        model.apply(variables32, IDS, POSITIONS, train=False),
        model32.apply(variables32, IDS, POSITIONS, train=False),
        atol=0.05,
    )


def test_too_long_input_is_refused(model_and_vars):
    model, variables = model_and_vars
    with pytest.raises(ValueError, match="max_len"):
        model.apply(variables, np.ones((1, 13), np.int32), train=False, method=model.encode)


def test_from_config():
    config = default_config.get_config()
    cfg = models.build_model(RunConfig.from_config_dict(config).model, 502).config
    assert cfg.vocab_size == 502 and cfg.mask_id == 501
    assert cfg.hidden_size == config.model.hidden_size
    assert cfg.attention_impl is None and cfg.dtype == jnp.float32
    with config.unlocked():
        config.model.dtype = "bfloat16"
        config.model.attention_impl = "cudnn"
    cfg = models.build_model(RunConfig.from_config_dict(config).model, 502).config
    assert cfg.dtype == jnp.bfloat16 and cfg.attention_impl == "cudnn"
    with config.unlocked():
        config.model.num_heads = 3
    with pytest.raises(ValueError, match="num_heads"):
        RunConfig.from_config_dict(config)


@pytest.mark.parametrize("layers,impl", [(1, None), (2, None), (2, "manual")])
def test_last_block_at_positions_equals_gathering_the_full_output(layers, impl):
    model = models.BERT4Rec(model_config(num_layers=layers, attention_impl=impl))
    variables = model.init(jax.random.key(3), IDS, POSITIONS, train=False)
    # The fast path creates the same parameters: a tree made through it is the default's.
    fast_init = model.init(
        jax.random.key(3), IDS, POSITIONS, train=False, last_block_at_positions=True,
        method=model.predict_hidden,
    )  # fmt: skip
    assert jax.tree.map(np.shape, fast_init) == jax.tree.map(np.shape, variables)

    def hidden(fast):  # [B, P, H]
        return model.apply(
            variables, IDS, POSITIONS, train=False, last_block_at_positions=fast,
            method=model.predict_hidden,
        )  # fmt: skip

    assert hidden(True).shape == hidden(False).shape == (*POSITIONS.shape, 16)
    np.testing.assert_allclose(hidden(True), hidden(False), rtol=1e-5, atol=1e-5)
    # What export calls: the [MASK] row only, through `scoring_fns`.
    mask_pos = POSITIONS[:, 0]
    full, fast = scoring.scoring_fns(model), scoring.scoring_fns(model, last_block_at_mask=True)
    params = variables["params"]
    h = fast.encode(params, IDS, mask_pos)
    np.testing.assert_allclose(h, full.encode(params, IDS, mask_pos), rtol=1e-5, atol=1e-5)
    items = np.arange(1, VOCAB - 1, dtype=np.int32)
    np.testing.assert_allclose(
        fast.score(params, h, items),
        full.score(params, full.encode(params, IDS, mask_pos), items),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip


# ---- model.last_block="scored": the last block at the predicted positions in training --------


def _one_step(corpus, batch, mesh, last_block, loss_type="full", **model):
    """One train step's (metrics, parameters) with dropout off, so that both settings compare."""

    config = model_config(
        vocab_size=corpus.vocab_size, max_len=16, hidden_dropout=0.0, attention_dropout=0.0,
        last_block=last_block, **model,
    )  # fmt: skip
    built = models.build_model(
        config, corpus.vocab_size, corpus.item_features, corpus.user_features
    )
    schedule = optimizer.make_schedule(1e-2, 0, 10)
    tx = optimizer.make_optimizer(schedule)
    loss_config = losses.LossConfig(type=loss_type, chunk_size=7, num_negatives=8)
    step_fn = train_step_lib.make_train_step(
        built, tx, schedule, loss_config, item_counts=corpus.popularity, mesh=mesh
    )
    state = train_step_lib.create_train_state(
        built, tx, mesh, max_predictions=batch["positions"].shape[1], seed=0
    )
    step = train_step_lib.jit_train_step(step_fn, state, mesh)
    state, metrics = step(state, sharding_lib.global_batch(mesh, batch))
    return jax.device_get(metrics), jax.device_get(state.params)


def _assert_same_step(a, b):
    (m_a, p_a), (m_b, p_b) = a, b
    assert m_a["weight_sum"] == m_b["weight_sum"] > 0
    for key in ("loss_sum", "correct_sum", "grad_norm"):
        np.testing.assert_allclose(m_a[key], m_b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    flat_a, flat_b = (jax.tree_util.tree_flatten_with_path(p)[0] for p in (p_a, p_b))
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        if jax.tree_util.keystr(path).endswith("['key']['bias']"):
            continue  # its gradient is 0 up to rounding (a shift of every logit alike)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def _cloze_batches(buckets=()):

    corpus = random_corpus(np.arange(60) % 17 + 3, num_items=40, seed=1)
    split = leave_one_out(corpus, "standard")
    config = cloze.InputConfig(
        max_len=16, mask_prob=0.4, max_predictions=6, sliding_step=4, buckets=buckets
    )
    return corpus, split, config


@pytest.mark.parametrize("buckets", [(), (4, 8)])
def test_last_block_at_scored_positions_gives_the_full_loss_and_gradients(buckets):

    corpus, split, config = _cloze_batches(buckets)
    instances = input_pipeline.TrainingInstances(corpus, split, config)
    bucket, first = None, 0
    if buckets:  # a batch of the shortest bucket, cut to its shape
        bucket, first = 0, int(np.flatnonzero(instances.batch_buckets(0, 16) == 0)[0])
    indices = instances.local_indices(0, 16, first_batch=first, num_batches=1)[0]
    batch = instances.materialize(indices, 0, bucket=bucket)
    assert batch["ids"].shape[1] == (4 if buckets else 16)
    mesh = sharding_lib.make_mesh(1)
    _assert_same_step(_one_step(corpus, batch, mesh, "all"),
                      _one_step(corpus, batch, mesh, "scored"))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss_type, model_axis, features",
    [
        ("chunked", 2, {}),  # the vocabulary-parallel table, on 8 devices
        ("sampled_softmax", 1, {"user_features": "prefix"}),
    ],
)
def test_last_block_scored_on_8_devices_with_device_batches(loss_type, model_axis, features):

    corpus, split, config = _cloze_batches((4, 8))
    if features:  # one categorical user feature: the prefix token shifts every position by one
        rng = np.random.default_rng(0)
        users = rng.integers(0, 3, size=(corpus.num_users + 1, 1)).astype(np.int32)
        corpus = Corpus(**{**corpus.__dict__, "user_features": {"group": users}})
    mesh8 = sharding_lib.make_mesh(8, model=model_axis)
    source = device_input.DeviceInput(corpus, split, config, 16, sharding_lib.make_mesh(1))
    batch = jax.device_get(source.batch(2))
    if features:
        batch = dict(batch, users=np.arange(1, 17, dtype=np.int32) % (corpus.num_users + 1))
    full = _one_step(corpus, batch, sharding_lib.make_mesh(1), "all", loss_type, **features)
    _assert_same_step(full, _one_step(corpus, batch, mesh8, "scored", loss_type, **features))
