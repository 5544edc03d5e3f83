"""model.kind="sasrec", SASRec as published: the layer against a numpy version of the paper's
equations, causality, end-aligned positions; next-item targets; every loss on 1 and 8 devices;
evaluation and export inputs, export parity; workdir compatibility; and model.kind="bert4rec" as
it was."""

import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_corpus, random_params, small_model_config, tiny_config

from bert4rec_jax import (
    checkpointing,
    device_input,
    experiment,
    export,
    input_pipeline,
    losses,
    models,
    optimizer,
    recommend,
    scoring,
    train_lib,
)
from bert4rec_jax import sharding as sharding_lib
from bert4rec_jax import train_step as train_step_lib
from bert4rec_jax import workdir as workdir_lib
from bert4rec_jax.config import RunConfig
from bert4rec_jax.datasets.corpus import leave_one_out
from bert4rec_jax.scoring import build_inputs

NUM_ITEMS = 40
MAX_LEN = 12


def _config(kind="sasrec", num_layers=2, **overrides) -> models.ModelConfig:
    fields = dict(num_layers=num_layers, intermediate_size=24, hidden_dropout=0.0,
                  attention_dropout=0.0, layer_norm_eps=1e-8, kind=kind)  # fmt: skip
    return small_model_config(NUM_ITEMS + 2, MAX_LEN, **(fields | overrides))


def _model(kind="sasrec", num_layers=2, **overrides) -> models.Model:
    return models.build_model(_config(kind, num_layers, **overrides), NUM_ITEMS + 2)


def _ids(rng, rows=3):
    """Right-padded rows: a full one, a short one, one of a single item."""
    ids = rng.integers(1, NUM_ITEMS + 1, size=(rows, MAX_LEN)).astype(np.int32)
    ids[1, 7:] = 0
    ids[2, 1:] = 0
    return ids


# ---- The model against the paper's equations ----------------------------------------------------


def _layer_norm(x, p, eps=1e-8):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _numpy_sasrec(params, ids, heads):
    """SASRec's forward pass written from the paper (Kang & McAuley 2018, Sec. III) and its
    authors' code, one row and one position at a time in float64: the states after the final
    LayerNorm, [B, N, H], at the items' positions (padding rows are left 0)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    table, pos_table = p["item_embedding"], p["position_embedding"]
    max_len, d = pos_table.shape
    hd = d // heads
    out = np.zeros(ids.shape + (d,))
    for b, row in enumerate(ids):
        n = int((row != 0).sum())  # items first, then padding
        # E_hat: the item's embedding scaled by sqrt(d), plus the position counted from the
        # end (the reference left-pads, so its last item is always at position max_len - 1).
        x = np.stack([table[row[t]] * np.sqrt(d) + pos_table[max_len - n + t] for t in range(n)])
        for i in range(len([k for k in p if k.startswith("layers_")])):
            lp = p[f"layers_{i}"]
            q_in = _layer_norm(x, lp["attention_layer_norm"])
            y = np.zeros_like(x)
            for t in range(n):  # causal: position t reads positions 0..t
                for h in range(heads):
                    cols = slice(h * hd, (h + 1) * hd)
                    q = (q_in[t] @ lp["query"]["kernel"] + lp["query"]["bias"])[cols]
                    k = (x[: t + 1] @ lp["key"]["kernel"] + lp["key"]["bias"])[:, cols]
                    v = (x[: t + 1] @ lp["value"]["kernel"] + lp["value"]["bias"])[:, cols]
                    logits = k @ q / np.sqrt(hd)
                    w = np.exp(logits - logits.max())
                    y[t, cols] = (w / w.sum()) @ v
            y = q_in + y  # the residual adds the normalised query
            f = _layer_norm(y, lp["feed_forward_layer_norm"])
            inner = np.maximum(
                f @ lp["feed_forward_in"]["kernel"] + lp["feed_forward_in"]["bias"], 0
            )
            x = f + inner @ lp["feed_forward_out"]["kernel"] + lp["feed_forward_out"]["bias"]
        out[b, :n] = _layer_norm(x, p["final_layer_norm"])
    return out


@pytest.mark.parametrize("impl", [None, "manual"])
def test_forward_pass_equals_the_published_equations_in_numpy(impl):
    model = _model(attention_impl=impl)
    params = random_params(model, scale=0.3)["params"]
    ids = _ids(np.random.default_rng(4))
    want = _numpy_sasrec(params, ids, heads=2)
    got = np.asarray(model.apply({"params": params}, ids, train=False, method=model.encode))
    real = ids != 0
    np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)
    # Scores: the state dotted with the input table, no transform and no bias.
    positions = np.maximum((ids != 0).sum(1) - 1, 0)[:, None]  # each row's last item
    logits = np.asarray(model.apply({"params": params}, ids, positions, train=False))
    last = want[np.arange(3), positions[:, 0]]  # [B, H]
    np.testing.assert_allclose(
        logits[:, 0], last @ np.asarray(params["item_embedding"]).T, rtol=1e-5, atol=1e-4
    )
    assert set(params) == {"item_embedding", "position_embedding", "layers_0", "layers_1",
                           "final_layer_norm"}  # fmt: skip
    table, bias = models.SASRec.output_layer(params)
    assert table is params["item_embedding"] and not np.asarray(bias).any()


def test_padding_at_the_end_changes_nothing_and_the_last_item_sits_at_the_last_position():
    model = _model()
    variables = random_params(model, scale=0.3)
    ids = _ids(np.random.default_rng(5))
    encode = jax.jit(lambda x: model.apply(variables, x, train=False, method=model.encode))
    short = encode(ids[:, :7])  # row 1's 7 items without its padding; row 0 cut to 7 items
    full = encode(ids)
    np.testing.assert_allclose(short[1:, :7], full[1:, :7], rtol=1e-5, atol=1e-5)
    # Row 0 cut to its first 7 items is a 7-item history: its last item moves to position
    # max_len - 1, so it reads like row 1 would, not like row 0's 7th column.
    positions = models.sasrec.end_aligned_positions(jnp.asarray(ids != 0), MAX_LEN)
    np.testing.assert_array_equal(positions[1, :7], np.arange(MAX_LEN - 7, MAX_LEN))
    np.testing.assert_array_equal(positions[2, 0], MAX_LEN - 1)
    np.testing.assert_array_equal(positions[0], np.arange(MAX_LEN))


def test_output_at_t_ignores_every_later_item_in_every_layer():
    """Perturbation test: other items after t change no layer's output at positions <= t, nor
    the states there (also when the last block runs for chosen rows only). The bidirectional
    model, the control, does change."""
    rng = np.random.default_rng(1)
    ids = rng.integers(1, NUM_ITEMS + 1, size=(2, MAX_LEN)).astype(np.int32)
    positions = np.tile(np.arange(MAX_LEN, dtype=np.int32), (2, 1))
    for kind in ("sasrec", "bert4rec"):
        model = _model(kind, intermediate_size=32)
        variables = random_params(model)

        @jax.jit
        def run(x, model=model, variables=variables):
            h, state = model.apply(
                variables, x, positions, train=False, capture_intermediates=True,
                method=type(model).predict_hidden,
            )  # fmt: skip
            inter = state["intermediates"]
            layers = [inter[f"layers_{i}"]["__call__"][0] for i in range(2)]  # [B, N, H] each
            last_only = model.apply(
                variables, x, positions, train=False, last_block_at_positions=True,
                method=type(model).predict_hidden,
            )  # fmt: skip
            return [*layers, h, last_only]

        base = run(ids)
        for t in (0, 4, MAX_LEN - 2):
            changed = ids.copy()
            changed[:, t + 1 :] = rng.integers(1, NUM_ITEMS + 1, size=(2, MAX_LEN - t - 1))
            for name, a, b in zip(("layer 0", "layer 1", "head", "last"), base,
                                  run(changed), strict=True):  # fmt: skip
                diff = float(np.abs(np.asarray(a)[:, : t + 1] - np.asarray(b)[:, : t + 1]).max())
                if kind == "sasrec":
                    assert diff < 1e-5, (name, t, diff)
                else:
                    assert diff > 1e-6, (name, t, diff)  # the control: it does see them


def test_last_block_for_chosen_rows_and_dropout_only_in_training():
    model = _model(hidden_dropout=0.3, attention_dropout=0.3)
    variables = random_params(model, scale=0.3)
    ids = _ids(np.random.default_rng(6))
    positions = np.array([[11, 3], [6, 0], [0, 0]], np.int32)

    def hidden(fast, train=False, seed=0):
        return np.asarray(model.apply(
            variables, ids, positions, train=train, last_block_at_positions=fast,
            rngs={"dropout": jax.random.key(seed)}, method=model.predict_hidden,
        ))  # fmt: skip

    np.testing.assert_allclose(hidden(True), hidden(False), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(hidden(False, True, 1), hidden(False, True, 1))
    assert not np.allclose(hidden(False, True, 1), hidden(False, True, 2))
    assert not np.allclose(hidden(False, True, 1), hidden(False))


def test_side_features_and_unknown_kinds_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="model.item_features / model.user_features"):
        _config(item_features=True)
    with pytest.raises(ValueError, match="model.item_features / model.user_features"):
        _config(user_features="add")
    with pytest.raises(ValueError, match=re.escape("model.kind='gpt'")):
        _config(kind="gpt")


# ---- Training instances -------------------------------------------------------------------------


def _next_item_config(**overrides):
    return input_pipeline.InputConfig(
        max_len=8, max_predictions=8, sliding_step=3, next_item=True, **overrides
    )


@pytest.mark.parametrize("pipeline", ["tf.data", "device"])
@pytest.mark.parametrize("buckets", [(), (3, 5)])
def test_targets_are_the_inputs_shifted_by_one_with_padding_weighted_0(pipeline, buckets):
    lengths = np.array([1, 2, 3, 5, 9, 14, 30])  # 1 (no window) .. several windows
    corpus = random_corpus(lengths + 2)  # + the validation and test items
    split = leave_one_out(corpus, "standard")
    config = _next_item_config(buckets=buckets)
    if pipeline == "tf.data":
        instances = input_pipeline.TrainingInstances(corpus, split, config)
        assert instances.num_instances == instances.num_windows  # one per window, no masks
        if buckets:
            rows = [
                instances.materialize(
                    instances.local_indices(0, 8, first_batch=b, num_batches=1)[0], 0, bucket=k
                )
                for b, k in enumerate(instances.batch_buckets(0, 8))
            ]
        else:
            rows = [instances.epoch_arrays(0)]
    else:
        source = device_input.DeviceInput(corpus, split, config, 16, sharding_lib.make_mesh(8))
        rows = [jax.device_get(source.batch(step)) for step in range(3)]
    # Every interaction is a unique item: the item says which user and where.
    where = {int(item): i for i, item in enumerate(corpus.items)}
    seen_lengths = set()
    for batch in rows:
        ids, labels, weights = batch["ids"], batch["labels"], batch["weights"]
        n = ids.shape[1]
        assert batch["positions"].shape == labels.shape == weights.shape == ids.shape
        np.testing.assert_array_equal(batch["positions"], np.broadcast_to(np.arange(n), ids.shape))
        for row_ids, row_labels, row_weights in zip(ids, labels, weights, strict=True):
            k = int((row_ids != 0).sum())  # inputs: items first, then padding
            assert k >= 1 and (row_ids[:k] != 0).all() and (row_ids[k:] == 0).all()
            np.testing.assert_array_equal(row_weights, (np.arange(n) < k).astype(np.float32))
            assert (row_labels[k:] == 0).all()
            np.testing.assert_array_equal(row_labels[: k - 1], row_ids[1:k])  # shifted by one
            # The last label is the item after the last input, in the same user's training part.
            first, last = where[int(row_ids[0])], where[int(row_labels[k - 1])]
            np.testing.assert_array_equal(corpus.items[first : last + 1][:-1], row_ids[:k])
            user = int(np.searchsorted(corpus.offsets, first, side="right") - 1)
            assert last < split.train_ends[user]  # never a validation or test item
            seen_lengths.add(k)
    assert max(seen_lengths) == 8  # full windows: max_len inputs, each with its next item


def test_cloze_only_input_fields_are_refused_naming_the_field(tmp_path):
    for field, value in (("input.mask_last_weight", 2.0), ("input.mask_last_share", 0.25)):
        config = tiny_config(tmp_path, **{"model.kind": "sasrec", field: value})
        with pytest.raises(ValueError, match=re.escape(f"{field}=")):
            train_lib.train_and_evaluate(config, str(tmp_path / "work"))
    config = tiny_config(tmp_path, **{"model.kind": "gpt"})
    with pytest.raises(ValueError, match=re.escape("model.kind=")):
        train_lib.train_and_evaluate(config, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()


# ---- Losses -------------------------------------------------------------------------------------


def test_bce_is_one_negative_per_prediction_and_drops_an_accidental_hit():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 3, 4)).astype(np.float32)
    table = rng.normal(size=(10, 4)).astype(np.float32)
    bias = rng.normal(size=(10,)).astype(np.float32)
    labels = np.array([[1, 2, 3], [4, 5, 0]])
    weights = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
    negatives = np.array([[7, 2, 8], [6, 1, 1]])  # [0, 1]: an accidental hit
    got = losses.bce_loss(h, table, bias, labels, weights, negatives)
    pos = np.einsum("bph,bph->bp", h, table[labels]) + bias[labels]
    neg = np.einsum("bph,bph->bp", h, table[negatives]) + bias[negatives]
    per = np.log1p(np.exp(-pos)) + np.where(negatives == labels, 0.0, np.log1p(np.exp(neg)))
    np.testing.assert_allclose(got["loss_sum"], (per * weights).sum(), rtol=1e-5)
    assert float(got["weight_sum"]) == float(got["prediction_count"]) == 5.0
    with pytest.raises(ValueError, match="loss.proposal="):
        losses.LossConfig(type="bce", proposal="popularity")


def test_bce_negatives_never_equal_the_positive_and_cover_every_other_item():
    labels = jnp.asarray(np.tile(np.arange(1, 6, dtype=np.int32), (2000, 1)))  # [2000, 5]
    negatives = np.asarray(losses.uniform_items_except(jax.random.key(0), labels, 5 + 2))
    assert (negatives != np.asarray(labels)).all()
    assert negatives.min() == 1 and negatives.max() == 5  # items only: no padding, no [MASK]
    for label in range(1, 6):  # uniform over the 4 other items: 2000 draws each, 500 expected
        counts = np.bincount(negatives[:, label - 1], minlength=6)[1:]
        assert (
            counts[label - 1] == 0 and (np.abs(counts[np.arange(5) != label - 1] - 500) < 80).all()
        )


def _sasrec_step(corpus, batch, loss_type, mesh):
    model = models.build_model(
        models.ModelConfig(
            max_len=8, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=16,
            hidden_dropout=0.1, attention_dropout=0.1, layer_norm_eps=1e-8, kind="sasrec",
        ),
        corpus.vocab_size,
    )  # fmt: skip
    schedule = optimizer.make_schedule(1e-2, 0, 10)
    tx = optimizer.make_optimizer(schedule)
    loss_config = losses.LossConfig(type=loss_type, chunk_size=7, num_negatives=8)
    step_fn = train_step_lib.make_train_step(
        model, tx, schedule, loss_config, item_counts=corpus.popularity, mesh=mesh
    )
    state = train_step_lib.create_train_state(model, tx, mesh, max_predictions=8, seed=0)
    params0 = jax.device_get(state.params)
    step = train_step_lib.jit_train_step(step_fn, state, mesh)
    state, metrics = step(state, sharding_lib.global_batch(mesh, batch))
    return params0, jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.parametrize(
    "loss_type, model_axis",
    [
        ("full", 1),
        ("bce", 1),
        # Two compiled steps each: the quick loop keeps the two above.
        pytest.param("chunked", 1, marks=pytest.mark.slow),
        # Vocabulary-parallel: the item table split over 2 devices.
        pytest.param("chunked", 2, marks=pytest.mark.slow),
        pytest.param("full", 2, marks=pytest.mark.slow),
        pytest.param("sampled_softmax", 1, marks=pytest.mark.slow),
        pytest.param("gbce", 1, marks=pytest.mark.slow),
    ],
)
def test_each_loss_trains_one_sasrec_step_equally_on_1_and_8_devices(loss_type, model_axis):
    corpus = random_corpus(np.arange(40) % 13 + 4, num_items=NUM_ITEMS, seed=2)
    split = leave_one_out(corpus, "standard")
    instances = input_pipeline.TrainingInstances(corpus, split, _next_item_config())
    batch = instances.materialize(instances.local_indices(0, 16, num_batches=1)[0], 0)
    params0, params1, m1 = _sasrec_step(corpus, batch, loss_type, sharding_lib.make_mesh(1))
    _, params8, m8 = _sasrec_step(
        corpus, batch, loss_type, sharding_lib.make_mesh(8, model=model_axis)
    )
    assert m1["weight_sum"] == m8["weight_sum"] == batch["weights"].sum() > 16
    assert np.isfinite(m1["loss_sum"])
    for key in ("loss_sum", "correct_sum", "grad_norm"):
        np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, atol=1e-5, err_msg=key)
    flat1, flat8 = (jax.tree_util.tree_flatten_with_path(p)[0] for p in (params1, params8))
    for (path, a), (_, b) in zip(flat1, flat8, strict=True):
        if jax.tree_util.keystr(path).endswith("['key']['bias']"):
            # A key bias shifts every logit of a query alike: its gradient is 0 up to rounding,
            # which Adam's first step turns into lr * g / (|g| + eps), noise of ~1e-5.
            continue
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    pairs = zip(jax.tree.leaves(params0), jax.tree.leaves(params1), strict=True)
    moved = [np.abs(a - b).max() for a, b in pairs]
    assert max(moved) > 1e-4  # the step moved the parameters: the comparison compares something


# ---- Scoring inputs: evaluation and export ------------------------------------------------------


def test_evaluation_reads_the_last_max_len_items_and_scores_at_the_last():
    corpus = random_corpus([3, 6, 20])
    split = leave_one_out(corpus, "standard")
    ids, last = build_inputs(corpus, split, "test", 8, append_mask=False)
    assert ids.shape == (3, 8) and not (ids == corpus.mask_id).any()
    np.testing.assert_array_equal(last, [1, 4, 7])  # 2, 5 and (capped) 8 history items
    for row, user in enumerate(split.eval_users):
        history = corpus.items[corpus.offsets[user] : split.history_ends(corpus, "test")[row]]
        np.testing.assert_array_equal(ids[row, : last[row] + 1], history[-8:])
        assert (ids[row, last[row] + 1 :] == 0).all()
    # BERT4Rec's inputs, as before: one item fewer, then [MASK].
    ids_b, mask_pos = build_inputs(corpus, split, "test", 8)
    np.testing.assert_array_equal(mask_pos, [2, 5, 7])
    assert (ids_b[np.arange(3), mask_pos] == corpus.mask_id).all()


def test_export_inputs_equal_evaluation_inputs():
    corpus = random_corpus([3, 6, 20, 11])
    split = leave_one_out(corpus, "standard")
    model = models.build_model(models.ModelConfig(max_len=8, kind="sasrec"), corpus.vocab_size)
    want_ids, want_last = build_inputs(corpus, split, "test", 8, append_mask=False)
    ends = split.history_ends(corpus, "test")
    history = np.zeros((len(ends), 25), np.int32)  # whole histories, padded at the end
    for row, user in enumerate(split.eval_users):
        items = corpus.items[corpus.offsets[user] : ends[row]]
        history[row, : len(items)] = items
    history[0, 10] = corpus.num_items + 5  # an unknown id in the padding: still padding
    ids, last = jax.jit(scoring.model_inputs(model))(history)
    np.testing.assert_array_equal(np.asarray(last), want_last)
    np.testing.assert_array_equal(np.asarray(ids), want_ids)


@pytest.mark.slow
def test_exported_sasrec_scores_equal_in_process_scores_and_the_saved_model(tmp_path):
    """Export parity for a SASRec model: the jax.export artifact and the SavedModel give the
    in-process scores (evaluation's inputs and scoring functions) of whole histories."""
    import tensorflow as tf

    corpus = random_corpus(np.arange(30) % 17 + 3, num_items=NUM_ITEMS, seed=3)
    split = leave_one_out(corpus, "standard")
    model = _model(num_layers=2)
    params = random_params(model)["params"]
    vocabulary = np.arange(NUM_ITEMS + 1) + 1000
    output = tmp_path / "export"
    export.export_model(model, params, vocabulary, output, top_k=10, platforms=["cpu"])
    rec = recommend.Recommender.load(output)
    assert rec.history_length == MAX_LEN  # SASRec reads max_len items: no [MASK]

    ids, last = build_inputs(corpus, split, "test", MAX_LEN, append_mask=False)
    ends = split.history_ends(corpus, "test")
    history = np.zeros((len(ends), 20), np.int32)
    for row, user in enumerate(split.eval_users):
        items = corpus.items[corpus.offsets[user] : ends[row]]
        history[row, : len(items)] = items
    fns = scoring.scoring_fns(model)
    h = jax.jit(fns.encode)(params, ids, last)
    want = np.asarray(
        jax.jit(fns.score)(params, h, np.arange(1, NUM_ITEMS + 1, dtype=np.int32))
    )  # [users, items]
    seen = np.zeros((len(ends), NUM_ITEMS + 1), bool)
    seen[np.arange(len(ends))[:, None], history] = True
    want = np.where(seen[:, 1:], -np.inf, want)
    got_ids, got_scores = rec.run(history, exclude_seen=True)
    np.testing.assert_allclose(got_scores, -np.sort(-want, axis=1)[:, :10], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        got_scores, np.take_along_axis(want, got_ids - 1, axis=1), rtol=1e-5, atol=1e-5
    )
    loaded = tf.saved_model.load(str(output / "saved_model"))
    out = loaded.signatures[export.SIGNATURE](
        history=tf.constant(history),
        users=tf.zeros([len(history)], tf.int32),
        exclude_seen=tf.ones([len(history)], tf.bool),
    )
    np.testing.assert_array_equal(out[export.ITEM_IDS].numpy(), got_ids)
    np.testing.assert_allclose(out[export.SCORES].numpy(), got_scores, rtol=1e-5, atol=1e-5)


# ---- Workdirs and the default -------------------------------------------------------------------


def test_a_workdir_refuses_another_kind_naming_the_field(tmp_path):
    workdir = tmp_path / "work"
    (workdir / "checkpoints").mkdir(parents=True)
    old = tiny_config(tmp_path)
    del old.model["kind"]  # a run from before model.kind: BERT4Rec
    workdir_lib.save_config(workdir, old)
    # bert4rec: the same model
    workdir_lib.check_compatible(workdir, RunConfig.from_config_dict(tiny_config(tmp_path)))
    with pytest.raises(checkpointing.CheckpointError, match=re.escape("model.kind='sasrec'")):
        sasrec = tiny_config(tmp_path, **{"model.kind": "sasrec"})
        workdir_lib.check_compatible(workdir, RunConfig.from_config_dict(sasrec))


def _digest(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(array)).tobytes()).hexdigest()[:16]


@pytest.mark.slow
def test_kind_bert4rec_reproduces_the_model_from_before_kind_existed(tmp_path):
    """configs/tiny.py with model.kind="bert4rec": the batches of both input paths, the
    evaluation inputs, the initial parameters and one train step's loss and parameters of every
    loss, as commit 60011fc (before model.kind) computed them on CPU."""
    config = tiny_config(tmp_path, warmup_steps=0)
    assert config.model.kind == "bert4rec"
    run = RunConfig.from_config_dict(config)
    exp = experiment.Experiment.from_run(run)
    input_config = run.input
    batch = next(
        input_pipeline.train_batches(exp.corpus, exp.split, input_config, config.batch_size)
    )
    mesh = sharding_lib.make_mesh(1)
    drawn = device_input.DeviceInput(
        exp.corpus, exp.split, input_config, config.batch_size, mesh
    ).batch(3)
    ids, mask_pos = build_inputs(exp.corpus, exp.split, "test", config.model.max_len)
    digests = {k: _digest(v) for k, v in batch.items()}
    digests |= {f"device_{k}": _digest(v) for k, v in drawn.items()}
    digests |= {"eval_ids": _digest(ids), "eval_pos": _digest(mask_pos)}
    assert digests == {
        "ids": "fa97bd7865f75978",
        "positions": "986c78a3c4747d44",
        "labels": "1efeea08107ee51c",
        "weights": "f8f45abeb0ce1296",
        "device_ids": "c1e72e9220bfcab9",
        "device_labels": "25bf63dee6f59ec2",
        "device_positions": "f6a5c4e99a63401e",
        "device_weights": "af40c801eb7bcb5a",
        "eval_ids": "8784bd810c60d031",
        "eval_pos": "ce5292f7b5139dfd",
    }
    # (loss_sum, sum of |parameters| after the step); the initial sum is 116.97894287109375.
    want = {
        "full": (169.15017700195312, 117.27532958984375),
        "chunked": (169.15016174316406, 117.27532958984375),
        "sampled_softmax": (115.10633850097656, 117.24311828613281),
        "gbce": (26.74956703186035, 117.15341186523438),
    }
    tx, schedule = optimizer.from_train_config(run.train)

    def abs_sum(params):
        return float(sum(np.abs(x).sum() for x in jax.tree.leaves(jax.device_get(params))))

    for loss_type, (loss_sum, params_sum) in want.items():
        state = train_step_lib.create_train_state(
            exp.model, tx, mesh, max_predictions=config.input.max_predictions, seed=0
        )
        if loss_type == "full":
            np.testing.assert_allclose(abs_sum(state.params), 116.97894287109375, rtol=1e-6)
        step_fn = train_step_lib.make_train_step(
            exp.model, tx, schedule,
            losses.LossConfig(type=loss_type, num_negatives=16, chunk_size=7),
            item_counts=exp.corpus.popularity, mesh=mesh,
        )  # fmt: skip
        state, metrics = train_step_lib.jit_train_step(step_fn, state, mesh)(
            state, sharding_lib.global_batch(mesh, batch)
        )
        np.testing.assert_allclose(float(metrics["loss_sum"]), loss_sum, rtol=1e-6)
        np.testing.assert_allclose(abs_sum(state.params), params_sum, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["tf.data", "device"])
def test_sasrec_trains_validates_and_tests_end_to_end(tmp_path, pipeline):
    config = tiny_config(
        tmp_path,
        **{"model.kind": "sasrec", "loss.type": "bce", "input.pipeline": pipeline,
           "num_train_steps": 6, "eval.every_steps": 3, "checkpoint_every_steps": 3},
    )  # fmt: skip
    results = train_lib.train_and_evaluate(config, str(tmp_path / "work"))
    assert 0.0 <= results["pop100/ndcg@10"] <= 1.0
    assert np.isfinite(results["full/mrr"])


@pytest.mark.slow
def test_the_all_users_job_serves_a_trained_sasrec_workdir(tmp_path, shared_data):
    """Train a few steps on ML-100K, export, and run `recommend --all_users`: every user's
    top 10 is the model's own, computed here from evaluation's inputs (the last max_len items,
    scored at the last), with the whole history excluded."""
    import json

    from helpers import run_cli

    config = tiny_config(
        tmp_path, dataset="ml-100k-raw", manual_dir=str(shared_data), num_train_steps=3,
        warmup_steps=1, checkpoint_every_steps=3,
        **{"model.kind": "sasrec", "model.intermediate_size": 32, "eval.every_steps": 0},
    )  # fmt: skip
    workdir, output, out = tmp_path / "work", tmp_path / "export", tmp_path / "recs.jsonl"
    train_lib.train_and_evaluate(config, str(workdir))
    export.export_workdir(workdir, output, checkpoint="latest", top_k=10, saved_model=False,
                          platforms=["cpu"])  # fmt: skip
    done = run_cli("bert4rec_jax.recommend", f"--model={output}", f"--workdir={workdir}",
                   "--all_users", f"--output={out}", "--k=10")  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]

    exp = experiment.Experiment.from_run(RunConfig.from_config_dict(config))
    corpus, max_len = exp.corpus, config.model.max_len
    params, _ = checkpointing.restore_params(workdir, "latest")
    ids = np.zeros((corpus.num_users, max_len), np.int32)
    last = np.zeros(corpus.num_users, np.int32)
    for u in range(corpus.num_users):
        window = corpus.sequence(u)[-max_len:]
        ids[u, : len(window)], last[u] = window, len(window) - 1
    fns = exp.scoring_fns
    h = jax.jit(fns.encode)(params, ids, last)
    scores = np.array(jax.jit(fns.score)(params, h, np.arange(1, corpus.num_items + 1)))
    for u in range(corpus.num_users):
        scores[u, corpus.sequence(u) - 1] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10] + 1
    assert [r["user"] for r in rows] == corpus.raw_user_ids.tolist()
    want = corpus.raw_item_ids[top].tolist()
    got = [[x["item"] for x in r["recommendations"]] for r in rows]
    agree = np.mean([a == b for a, b in zip(got, want, strict=True)])
    assert agree > 0.99, agree  # float rounding may swap two near-tied items in a rare row
    assert f"{corpus.num_users:,} users: {corpus.num_users:,} served" in done.stderr
