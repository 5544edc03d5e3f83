"""Serving on real ML-100K histories (many longer than max_len): the SavedModel in a process
without jax, whole-history exclusion, exactly k items, per-user status, MIPS over exported
vectors, user features, a manifest checked against itself, the all-users job."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_cli, tiny_config

from bert4rec_jax import checkpointing, experiment, export, recommend, train_lib
from bert4rec_jax.config import RunConfig
from bert4rec_jax.export import artifact

REPO = pathlib.Path(__file__).resolve().parents[1]
TOP_K = 100


def ml_100k_config(tmp, shared_data, **overrides):
    # The tiny model (max_len 20) on ML-100K: 943 users, most of them longer than 19 items.
    return tiny_config(
        tmp,
        dataset="ml-100k-raw",
        manual_dir=str(shared_data),
        num_train_steps=4,
        warmup_steps=1,
        checkpoint_every_steps=4,
        **{"eval.every_steps": 4, "eval.protocols": ("pop100",)},
        **overrides,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory, shared_data):
    """(experiment, params, workdir, export dir, Recommender): 4 steps on ML-100K, exported by
    the command line."""
    tmp = tmp_path_factory.mktemp("ml100k")
    config = ml_100k_config(tmp, shared_data)
    workdir, output = tmp / "work", tmp / "export"
    train_lib.train_and_evaluate(config, str(workdir))
    run_cli("bert4rec_jax.export", f"--workdir={workdir}", f"--output={output}",
            f"--top_k={TOP_K}", "--platforms=cpu")  # fmt: skip
    params, _ = checkpointing.restore_params(workdir, "best")
    exp = experiment.Experiment.from_run(RunConfig.from_config_dict(config))
    return exp, params, workdir, output, recommend.Recommender.load(output)


def dense_histories(corpus):
    """Every user's whole sequence, dense ids: the histories served."""
    return [corpus.sequence(u).astype(np.int32) for u in range(corpus.num_users)]


def in_process_top_k(exp, params, histories, users=None):
    """The model's top-k computed here, outside the artifact: build_inputs' layout on the last
    max_len - 1 items, every item of the whole history masked."""
    max_len, mask_id = exp.config.model.max_len, exp.corpus.mask_id
    ids = np.zeros((len(histories), max_len), np.int32)
    mask_pos = np.zeros(len(histories), np.int32)
    for row, h in enumerate(histories):
        window = h[-(max_len - 1) :]
        ids[row, : len(window)] = window
        ids[row, len(window)] = mask_id
        mask_pos[row] = len(window)
    fns = exp.scoring_fns
    users = None if users is None else jnp.asarray(users)
    h = jax.jit(fns.encode)(params, ids, mask_pos, users)
    items = np.arange(1, exp.corpus.num_items + 1, dtype=np.int32)
    scores = np.array(jax.jit(fns.score)(params, h, items))  # [n, V], writable
    for row, hist in enumerate(histories):
        scores[row, hist - 1] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
    return order + 1, np.take_along_axis(scores, order, axis=1)


@pytest.mark.slow
def test_saved_model_without_jax_excludes_the_whole_history(served, tmp_path):
    exp, params, _, output, _ = served
    histories = dense_histories(exp.corpus)
    assert sum(len(h) > exp.config.model.max_len for h in histories) > 500
    width = max(len(h) for h in histories)
    padded = np.zeros((len(histories), width), np.int32)
    for row, h in enumerate(histories):
        padded[row, : len(h)] = h
    np.save(tmp_path / "history.npy", padded)
    # The README's TensorFlow-only client, in a process where jax cannot be imported.
    script = textwrap.dedent(f"""
        import sys
        sys.modules["jax"] = None
        import numpy as np
        import tensorflow as tf

        serve = tf.saved_model.load({str(output / "saved_model")!r}).signatures["serving_default"]
        history = np.load({str(tmp_path / "history.npy")!r})
        out = serve(
            history=tf.constant(history),
            users=tf.zeros([len(history)], tf.int32),
            exclude_seen=tf.ones([len(history)], tf.bool),
        )
        np.save({str(tmp_path / "ids.npy")!r}, out["item_ids"].numpy())
        np.save({str(tmp_path / "scores.npy")!r}, out["scores"].numpy())
        assert "jax" not in sys.modules or sys.modules["jax"] is None
    """)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ids, scores = np.load(tmp_path / "ids.npy"), np.load(tmp_path / "scores.npy")
    assert ids.shape == (len(histories), TOP_K)
    seen = sum(len(np.intersect1d(ids[row], h)) for row, h in enumerate(histories))
    assert seen == 0
    want_ids, want_scores = in_process_top_k(exp, params, histories)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    # Ids agree except where two items' scores tie to float precision.
    assert (ids == want_ids).mean() > 0.999


@pytest.mark.slow
def test_recommend_returns_exactly_k_and_matches_mips(served):
    exp, _, _, _, rec = served
    corpus = exp.corpus
    raw = [corpus.raw_item_ids[h] for h in dense_histories(corpus)]
    result = rec.recommend(raw, k=rec.top_k)
    assert result.errors == (None,) * len(raw)
    assert all(len(items) == TOP_K for items in result)
    for items, history in zip(result, raw, strict=True):
        assert not set(item for item, _ in items) & set(history.tolist())

    # Exact maximum-inner-product search over the exported vectors, as the README's numpy does.
    encoded = rec.encode(raw)
    users = rec.user_vectors(encoded.histories)  # [n, H + 1]
    table = np.load(rec.directory / artifact.ITEM_EMBEDDINGS)[1 : corpus.num_items + 1]
    bias = np.load(rec.directory / artifact.OUTPUT_BIAS)[1 : corpus.num_items + 1]
    items = np.concatenate([table, bias[:, None]], axis=1)  # [V, H + 1]
    np.testing.assert_array_equal(items, rec.item_vectors())
    scores = users @ items.T  # [n, V]
    for row, h in enumerate(encoded.histories):
        scores[row, h - 1] = -np.inf
    best = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
    mips = corpus.raw_item_ids[best + 1]
    got = np.array([[item for item, _ in items] for items in result])
    assert (mips == got).mean() > 0.999  # up to float ties
    np.testing.assert_allclose(
        np.take_along_axis(scores, best, axis=1),
        [[score for _, score in items] for items in result],
        rtol=1e-4,
        atol=1e-4,
    )


@pytest.mark.slow
def test_bad_users_are_reported_and_the_rest_served(served, tmp_path):
    exp, _, _, output, rec = served
    corpus = exp.corpus
    good = [corpus.raw_item_ids[corpus.sequence(u)].tolist() for u in (0, 1, 2)]
    lines = [
        {"user": "a", "history": good[0]},
        {"user": "empty", "history": []},
        {"user": "b", "history": good[1]},
        {"user": "unknown", "history": [99999999, -5]},
        {"user": "c", "history": good[2] + [99999999]},
    ]
    result = rec.recommend([line["history"] for line in lines], k=10)
    assert result.errors == (None, "no item ids", None, "no known item ids", None)
    assert [len(items) for items in result] == [10, 0, 10, 0, 10]

    requests = tmp_path / "users.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "recs.jsonl"
    done = run_cli("bert4rec_jax.recommend", f"--model={output}", f"--input={requests}",
                   f"--output={out}", "--k=10")  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user"] for r in rows] == ["a", "empty", "b", "unknown", "c"]
    assert [r.get("error") for r in rows] == [None, "no item ids", None, "no known item ids", None]
    assert [len(r["recommendations"]) for r in rows] == [10, 0, 10, 0, 10]
    assert [r["item"] for r in rows[0]["recommendations"]] == [i for i, _ in result[0]]
    assert "5 users: 3 served, 2 without recommendations" in done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr  # not a terminal: plain lines
    strict = run_cli("bert4rec_jax.recommend", f"--model={output}", f"--input={requests}",
                     f"--output={out}", "--strict", check=False)  # fmt: skip
    assert strict.returncode == 1
    assert f"{requests}:2 (user 'empty') has no item ids" in strict.stderr


@pytest.mark.slow
def test_all_users_from_interactions_and_workdir(served, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    exp, _, workdir, output, rec = served
    corpus = exp.corpus
    users = corpus.raw_user_ids.tolist()
    histories = [corpus.raw_item_ids[corpus.sequence(u)] for u in range(corpus.num_users)]
    want = rec.recommend(histories, k=10)
    # An interactions table, grouped by user, its rows in reverse time within each user.
    table = pa.table(
        {
            "user": np.repeat(users, [len(h) for h in histories]),
            "item": np.concatenate([h[::-1] for h in histories]),
            "timestamp": np.concatenate([np.arange(len(h))[::-1] for h in histories]),
        }
    )
    pq.write_table(table, tmp_path / "interactions.parquet", row_group_size=5000)
    for source, out in (
        ([f"--input={tmp_path / 'interactions.parquet'}"], tmp_path / "a.parquet"),
        ([f"--workdir={workdir}", "--all_users"], tmp_path / "b.jsonl"),
    ):
        done = run_cli("bert4rec_jax.recommend", f"--model={output}", *source, f"--output={out}",
                       "--k=10", "--chunk_users=300")  # fmt: skip
        if out.suffix == ".parquet":
            rows = pq.read_table(out).to_pylist()
        else:
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            for r in rows:
                r["items"] = [x["item"] for x in r["recommendations"]]
        assert [r["user"] for r in rows] == users
        assert [r["items"] for r in rows] == [[i for i, _ in items] for items in want]
        assert f"{len(users):,} users: {len(users):,} served, 0 without" in done.stderr


@pytest.mark.slow
def test_user_features_are_served(tmp_path, shared_data):
    # Random parameters of a user-feature model (no training): what is tested is the plumbing,
    # raw user id -> feature row inside the artifact.
    config = ml_100k_config(tmp_path, shared_data, **{"model.user_features": "add"})
    exp = experiment.Experiment.from_run(RunConfig.from_config_dict(config))
    corpus = exp.corpus
    shapes = jax.eval_shape(
        lambda: exp.model.init(
            jax.random.key(0),
            jnp.zeros((1, config.model.max_len), jnp.int32),
            jnp.zeros((1, 1), jnp.int32),
            train=False,
        )["params"]
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)
    output = tmp_path / "export"
    export.export_model(exp.model, params, corpus.raw_item_ids, output, top_k=TOP_K,
                        user_ids=corpus.raw_user_ids, saved_model=False,
                        platforms=["cpu"])  # fmt: skip
    rec = recommend.Recommender.load(output)
    assert (output / artifact.USERS).exists() and rec.manifest["num_users"] == corpus.num_users
    picked = [0, 5, 17]
    histories = [corpus.sequence(u).astype(np.int32) for u in picked]
    raw = [corpus.raw_item_ids[h] for h in histories]
    known = rec.recommend(raw, k=TOP_K, users=corpus.raw_user_ids[picked].tolist())
    want_ids, _ = in_process_top_k(exp, params, histories, users=np.array(picked) + 1)
    assert [[i for i, _ in items] for items in known] == corpus.raw_item_ids[want_ids].tolist()
    # An unknown raw user, and no user at all, get the "unknown" row 0.
    anonymous = rec.recommend(raw, k=TOP_K, users=["no-such-user", None, 10**9])
    unknown_ids, _ = in_process_top_k(exp, params, histories, users=np.zeros(3, np.int32))
    assert [[i for i, _ in items] for items in anonymous] == corpus.raw_item_ids[
        unknown_ids
    ].tolist()
    assert rec.recommend(raw, k=TOP_K).items == anonymous.items
    assert known.items != anonymous.items


@pytest.mark.slow
@pytest.mark.parametrize(
    "field, edit",
    [
        ("top_k", lambda m: m.update(top_k=200)),
        ("top_k", lambda m: m.update(top_k=50)),
        ("serving.outputs.item_ids.shape",
         lambda m: m["serving"]["outputs"]["item_ids"].update(shape=["b", 99])),
        ("shapes['item_embedding']", lambda m: m["shapes"].update(item_embedding=[9, 9])),
        ("history_length", lambda m: m.update(history_length=7)),
    ],
)  # fmt: skip
def test_edited_manifest_is_refused_naming_the_field(served, tmp_path, field, edit):
    _, _, _, output, _ = served
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    path = copy / artifact.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    if field == "top_k" and manifest["top_k"] == 50:
        # A consistent edit of every top_k field: the function itself still returns 100.
        for name in ("item_ids", "scores"):
            manifest["serving"]["outputs"][name]["shape"] = ["b", 50]
    path.write_text(json.dumps(manifest))
    with pytest.raises(artifact.ArtifactError, match=re.escape(field)):
        recommend.Recommender.load(copy)
