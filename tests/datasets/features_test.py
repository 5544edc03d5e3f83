"""Tests of item side features and the user component (datasets/features.py, models, pipelines)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_corpus

from bert4rec_jax import cloze, device_input, input_pipeline, models, scoring, sharding
from bert4rec_jax import evaluation as ev
from bert4rec_jax.config import RunConfig
from bert4rec_jax.datasets import features, prepared, readers
from bert4rec_jax.datasets.corpus import corpus_from_sequences, leave_one_out
from configs import default as default_config

# ---- Parsing and alignment ------------------------------------------------------------------


def test_movielens_100k_features_from_the_real_files(shared_data):
    items = features.read_movielens_100k_items(shared_data / "ml-100k" / "u.data")
    assert len(items.raw_ids) == 1682
    row = int(np.flatnonzero(items.raw_ids == 1)[0])  # 1|Toy Story (1995)|01-Jan-1995|...
    genres = {features.ML100K_GENRES[g - 1] for g in items.features["genre"][row] if g}
    assert genres == {"Animation", "Children's", "Comedy"}
    assert items.features["year"][row, 0] == features.year_bucket(np.array([1995]))[0]
    unknown = int(np.flatnonzero(items.raw_ids == 267)[0])  # 267|unknown|| (no date)
    assert items.features["year"][unknown, 0] == features.YEAR_UNKNOWN
    assert items.features["year"].max() == features.NUM_YEAR_BUCKETS  # 1998 is the last

    users = features.read_movielens_100k_users(shared_data)
    assert len(users.raw_ids) == 943
    first = int(np.flatnonzero(users.raw_ids == 1)[0])  # 1|24|M|technician|85711
    assert users.features["age"][first, 0] == 2  # 18-24
    assert users.features["gender"][first, 0] == 1  # M
    assert users.features["occupation"].max() == 21  # u.occupation lists 21


def test_buckets():
    np.testing.assert_array_equal(
        features.year_bucket(np.array([0, 1922, 1940, 1955, 1989, 1990, 1995, 1998, 2005])),
        [1, 2, 3, 4, 7, 8, 13, 16, 16],
    )
    np.testing.assert_array_equal(features.age_bucket(np.array([7, 18, 24, 25, 49, 56, 73])),
                                  [1, 2, 2, 3, 5, 7, 7])  # fmt: skip


def toy_corpus():
    """Raw items 10, 20, 30, 40 (dense 1..4); raw users 5, 6, 7 (rows 1..3)."""
    seqs = [[10, 20, 30, 10], [20, 30, 40, 20, 30], [40, 10, 20]]
    offsets = np.cumsum([0] + [len(s) for s in seqs])
    return corpus_from_sequences("toy", np.array([5, 6, 7]), offsets, np.concatenate(seqs))


def test_item_features_csv_aligned_with_dense_ids(tmp_path):
    path = tmp_path / "items.csv"
    # 99 is not in the corpus (ignored); 30 has no row; 40 has an empty genre cell.
    path.write_text("item_id,genre,brand\n20,b|a,x\n99,a,y\n10,a,y\n\n40,,x\n")
    corpus = prepared.with_file_features(
        toy_corpus(), "file", {"path": "unused", "item_features_path": str(path)}
    )
    genre, brand = corpus.item_features["genre"], corpus.item_features["brand"]
    assert genre.shape == (corpus.vocab_size, 2) and brand.shape == (corpus.vocab_size, 1)
    # Categories in sorted order: genre a=1, b=2; brand x=1, y=2. Padding and [MASK] rows zero.
    np.testing.assert_array_equal(genre, [[0, 0], [1, 0], [2, 1], [0, 0], [0, 0], [0, 0]])
    np.testing.assert_array_equal(brand[:, 0], [0, 2, 1, 0, 1, 0])
    # Another data set ignores the field; an unset path leaves the corpus alone.
    other = prepared.with_file_features(toy_corpus(), "beauty", {"item_features_path": path})
    assert other.item_features == {}
    assert prepared.with_file_features(toy_corpus(), "file", {}).item_features == {}


@pytest.mark.parametrize(
    "text, match",
    [
        ("item_id,genre\n10,a\n20,a,b\n", r"items\.csv:3: expected 2 comma-separated cells, got 3"),
        ("item,genre\n10,a\n", r"items\.csv:1: no column 'item_id' \(file\.item_column\)"),
        ("item_id,genre\n10,a\n10,b\n", r"items\.csv:3: .*item '10' repeats line 2"),
        ("item_id\n10\n", r"items\.csv:1: every column besides the item column"),
        ("", r"items\.csv: file is empty"),
    ],
)
def test_item_features_csv_errors_name_file_and_line(tmp_path, text, match):
    path = tmp_path / "items.csv"
    path.write_text(text)
    with pytest.raises(readers.DataFormatError, match=match):
        features.read_item_features_csv(path, "item_id")


def test_features_survive_the_corpus_cache(tmp_path):
    corpus = toy_corpus()
    raw = features.RawFeatures(np.array([40, 10]), {"genre": np.array([[3, 1], [2, 0]], np.int32)})
    users = features.RawFeatures(np.array([6, 8]), {"age": np.array([[4], [5]], np.int32)})
    corpus = dataclasses.replace(
        corpus,
        item_features=features.align_items(corpus.raw_item_ids, corpus.vocab_size, raw),
        user_features=features.align_users(corpus.raw_user_ids, users),
    )
    np.testing.assert_array_equal(corpus.user_features["age"][:, 0], [0, 0, 4, 0])
    path = prepared.data_root(str(tmp_path)) / "c.npz"
    prepared.write_cache(path, corpus)
    back = prepared.read_cache(path)
    for name in ("item_features", "user_features"):
        want, got = getattr(corpus, name), getattr(back, name)
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


# ---- Model ----------------------------------------------------------------------------------

ITEMS = {"genre": np.array([[0, 0], [1, 2], [2, 0], [3, 0], [0, 0], [0, 0]], np.int32)}
USERS = {"age": np.array([[0], [1], [2], [3]], np.int32), "job": np.array([[0], [2], [0], [1]])}
VOCAB = 6  # 4 items
MASK = VOCAB - 1
IDS = np.array([[3, MASK, 2, 1, 0, 0], [1, 2, 3, 4, 3, MASK]], np.int32)
POSITIONS = np.array([[1, 0], [5, 0]], np.int32)
LABELS = np.array([[4, 0], [2, 0]], np.int32)
USER_ROWS = np.array([1, 0], np.int32)  # a known user and the unknown one


def config_with_small_model(**model):
    """configs/default.py with a model small enough for IDS (helpers.tiny_config is
    configs/tiny.py, whose model is larger)."""
    c = default_config.get_config()
    c.model.update(max_len=6, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16)
    c.model.update(model)
    c.input.max_predictions = 6  # the input section must fit the small model (parsed whole)
    return c


def small_model(**model) -> models.ModelConfig:
    """The model section of `config_with_small_model(**model)`."""
    return RunConfig.from_config_dict(config_with_small_model(**model)).model


def loss(model, params, users=None):
    """The masked-item cross-entropy summed over the batch (with dropout, as in training)."""
    logits = model.apply(
        {"params": params},
        IDS,
        POSITIONS,
        train=True,
        users=users,
        rngs={"dropout": jax.random.key(1)},
    )  # [B, P, V]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), LABELS[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * (LABELS > 0))


def init(model):
    return model.init(jax.random.key(0), IDS, POSITIONS, train=False)["params"]


def test_switches_off_reproduce_the_paper_model():
    small = small_model()
    plain = models.BERT4Rec(dataclasses.replace(small, vocab_size=VOCAB))
    # Features present in the data but both switches off: the paper's model, bit for bit.
    off = models.build_model(small_model(), VOCAB, ITEMS, USERS)
    assert off.config == plain.config
    p_plain, p_off = init(plain), init(off)
    assert jax.tree.structure(p_plain) == jax.tree.structure(p_off)
    jax.tree.map(np.testing.assert_array_equal, p_plain, p_off)
    assert float(loss(plain, p_plain)) == float(loss(off, p_off, USER_ROWS))


@pytest.mark.parametrize("placement", ["", "add", "mask", "prefix"])
def test_feature_embeddings_get_gradients(placement):
    model = models.build_model(
        small_model(item_features=True, user_features=placement), VOCAB, ITEMS, USERS
    )
    params = init(model)
    assert params["item_feature_genre"].shape == (4, 8)  # ids 0..3
    assert ("user_feature_age" in params) == bool(placement)
    assert ("user_token" in params) == (placement == "prefix")
    grads = jax.grad(lambda p: loss(model, p, USER_ROWS))(params)
    for name, g in grads.items():
        if "feature" in name:
            g = np.asarray(g)
            assert np.abs(g[1:]).sum() > 0, name  # used categories learn
            assert not g[0].any(), name  # 0 = none is never an embedding


def test_unknown_user_is_row_zero_and_changes_only_user_rows():
    model = models.build_model(small_model(user_features="add"), VOCAB, None, USERS)
    params = init(model)

    def logits(users):  # [B, P, V]
        return np.asarray(model.apply({"params": params}, IDS, POSITIONS, train=False, users=users))

    np.testing.assert_array_equal(logits(None), logits(np.zeros(2, np.int32)))  # None = unknown
    other = logits(np.array([3, 0], np.int32))
    assert not np.allclose(other[0], logits(USER_ROWS)[0])  # user row 1 vs row 3
    np.testing.assert_array_equal(other[1], logits(USER_ROWS)[1])


def test_switch_without_features_fails_naming_it():
    with pytest.raises(ValueError, match=r"model\.item_features=True but the data set has no"):
        models.build_model(small_model(item_features=True), VOCAB, {}, USERS)
    with pytest.raises(ValueError, match=r"model\.user_features"):
        RunConfig.from_config_dict(config_with_small_model(user_features="after"))


# ---- Pipelines and evaluation pass each row's user ------------------------------------------


def test_pipelines_carry_user_rows():
    corpus = random_corpus(24, num_items=30, max_length=14, repeats=True)
    split = leave_one_out(corpus)
    config = cloze.InputConfig(max_len=8, max_predictions=3, sliding_step=4, dupe_factor=2)
    batch = next(input_pipeline.train_batches(corpus, split, config, 16, with_users=True))
    # Each row's user row is the one whose training items the row's ids come from.
    for ids, user_row in zip(batch["ids"], batch["users"], strict=True):
        seq = set(split.train_sequence(corpus, user_row - 1).tolist()) | {0, corpus.mask_id}
        assert set(ids.tolist()) <= seq
    assert "users" not in next(input_pipeline.train_batches(corpus, split, config, 16))

    mesh = sharding.make_mesh()
    source = device_input.DeviceInput(corpus, split, config, 16, mesh, with_users=True)
    drawn = source.batch_with_instances(3)
    windows = cloze.make_windows(corpus, split, 8, 4)
    instance = np.asarray(drawn["instance"])
    masked = len(windows) * config.copies
    window = np.where(instance >= masked, instance - masked, instance % len(windows))
    np.testing.assert_array_equal(np.asarray(drawn["users"]), windows.users[window] + 1)


def test_evaluator_passes_each_users_row():
    corpus = random_corpus(24, num_items=30, max_length=14, seed=1, repeats=True)
    split = leave_one_out(corpus)
    rng = np.random.default_rng(2)
    table = jnp.asarray(rng.normal(size=(corpus.num_users + 1, corpus.vocab_size)), jnp.float32)

    def encode(params, ids, mask_pos, users):  # h = the user's own row of scores
        del ids, mask_pos
        return params[users]

    def score(params, h, item_ids):
        del params
        return h[:, item_ids] if item_ids.ndim == 1 else jnp.take_along_axis(h, item_ids, axis=1)

    fns = scoring.ScoringFns(encode, score, uses_users=True)
    config = ev.EvalConfig(max_len=8, protocols=("full",), batch_size=16, exclude_history=False)
    evaluator = ev.Evaluator(corpus, split, config, fns, mesh=sharding.make_mesh())
    rows = np.arange(len(split.eval_users))
    got = evaluator.rank_targets(table, "test", ["full"], rows)["full"]
    scores = np.asarray(table)[split.eval_users + 1, 1 : corpus.num_items + 1]  # [E, items]
    target = scores[rows, split.test_targets - 1][:, None]
    want = (scores >= target).sum(axis=1) - 1  # pessimistic, the target not counted
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("placement", ["add", "mask", "prefix"])
def test_last_block_at_positions_with_user_features(placement):
    # "prefix" shifts every item one token right inside the encoder; the positions must follow.
    model = models.build_model(
        small_model(item_features=True, user_features=placement), VOCAB, ITEMS, USERS
    )
    params = init(model)

    def hidden(fast):  # [B, P, H]
        return model.apply(
            {"params": params}, IDS, POSITIONS, train=False, users=USER_ROWS,
            last_block_at_positions=fast, method=model.predict_hidden,
        )  # fmt: skip

    np.testing.assert_allclose(hidden(True), hidden(False), rtol=1e-5, atol=1e-5)
