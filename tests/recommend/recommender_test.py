"""Export and recommend: the artifact against in-process scoring, TF, raw ids, damage, the CLIs."""

import io
import json
import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_cli

from bert4rec_jax import checkpointing, experiment, export, models, recommend
from bert4rec_jax.config import RunConfig
from bert4rec_jax.datasets import hashes
from bert4rec_jax.export import artifact
from bert4rec_jax.scoring import build_inputs

REPO = pathlib.Path(__file__).resolve().parents[1]


# ---- a randomly initialised model: raw ids, exclusion, batching, damage (fast) ----------------

NUM_ITEMS = 40
MAX_LEN = 12
# Items 1..3 get a large output bias, so they top every history's ranking unless excluded.
POPULAR = (1, 2, 3)
VOCABULARIES = {
    # What Corpus.raw_item_ids holds: entry 0 stands for padding.
    "strings": np.array([""] + [f"sku-{i:03d}" for i in range(1, NUM_ITEMS + 1)]),
    "sparse ints": np.array([-1] + [1000 + 7 * i for i in range(1, NUM_ITEMS + 1)], np.int64),
}


def random_model():
    config = models.ModelConfig(
        vocab_size=NUM_ITEMS + 2,
        max_len=MAX_LEN,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
    )
    model = models.BERT4Rec(config)
    ids = jnp.zeros((1, MAX_LEN), jnp.int32)
    # Random values of the right shapes: running init would compile it (seconds on 2 cores).
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), ids, jnp.zeros((1, 1), jnp.int32), train=False)
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: rng.normal(0.0, 0.5, s.shape).astype(np.float32), shapes["params"]
    )
    params["output_bias"][list(POPULAR)] = 50.0
    return model, params


@pytest.fixture(scope="module", params=sorted(VOCABULARIES))
def random_export(request, tmp_path_factory):
    """(export directory, vocabulary, its Recommender) of a random model, for CPU only and with
    no SavedModel (the trained run below tests the defaults). One Recommender per module, so
    each batch size compiles once."""
    model, params = random_model()
    vocabulary = VOCABULARIES[request.param]
    output = tmp_path_factory.mktemp("random") / "export"
    export.export_model(
        model, params, vocabulary, output, top_k=NUM_ITEMS, saved_model=False, platforms=["cpu"]
    )
    return output, vocabulary, recommend.Recommender.load(output)


def test_manifest_lists_every_file_with_its_checksum(random_export):
    output, vocabulary, _ = random_export
    manifest = json.loads((output / artifact.MANIFEST).read_text())
    on_disk = {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {artifact.MANIFEST}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashes.sha256_file(output / name)
    assert manifest["top_k"] == NUM_ITEMS and manifest["history_length"] == MAX_LEN - 1
    assert manifest["versions"]["jax"] == jax.__version__
    np.testing.assert_array_equal(artifact.read_raw_ids(output / artifact.VOCABULARY), vocabulary)
    # No temporary directory is left beside the export.
    assert [p.name for p in output.parent.iterdir()] == [output.name]


def test_seen_items_never_come_back_unless_allowed(random_export):
    _, vocabulary, rec = random_export
    popular = vocabulary[list(POPULAR)].tolist()
    others = vocabulary[10:14].tolist()
    # Everything is returned (k = all items), so an excluded item has nowhere to hide.
    excluded = rec.recommend([popular + others], k=NUM_ITEMS)[0]
    returned = [item for item, _ in excluded]
    assert not set(returned) & set(popular + others)
    assert len(returned) == NUM_ITEMS - len(popular + others)
    assert vocabulary[0].item() not in returned  # padding never comes back
    included = rec.recommend([popular + others], k=NUM_ITEMS, exclude_seen=False)[0]
    assert sorted(item for item, _ in included[:3]) == sorted(popular)
    assert len(included) == NUM_ITEMS
    scores = [score for _, score in included]
    assert scores == sorted(scores, reverse=True)

    # An item older than the window the model reads is excluded too, by the exported function:
    # every unseen item still comes back, so k = all unseen items gives exactly that many.
    width = rec.history_length
    long_history = popular[:1] + vocabulary[4 : 4 + width].tolist()  # popular[0] falls out
    unseen = NUM_ITEMS - len(long_history)
    returned = [item for item, _ in rec.recommend([long_history], k=unseen)[0]]
    assert len(returned) == unseen and not set(returned) & set(long_history)
    assert popular[1] == returned[0] or popular[2] == returned[0]
    ids, scores = rec.run([np.asarray([1] + list(range(4, 4 + width)), np.int32)])
    assert 1 not in ids[0, :unseen] and np.isneginf(scores[0, unseen:]).all()


def test_unknown_ids_are_skipped_and_counted_or_refused(random_export):
    _, vocabulary, rec = random_export
    known = vocabulary[5:8].tolist()
    unknown = ["no-such-item", 123456789]
    result = rec.recommend([known, known[:1] + unknown + known[1:]], k=5)
    assert result.unknown_ids == (0, 2) and result.num_unknown == 2
    # Skipping leaves the same history, so the same recommendations.
    assert result[0] == result[1]
    with pytest.raises(recommend.UnknownItemError, match=r"histories\[1\]: item id 'no-such-item'"):
        rec.recommend([known, known + unknown], k=5, strict=True)
    # An empty and an all-unknown history are reported; the others are served.
    result = rec.recommend([known, [], unknown, known], k=5)
    assert result.errors == (None, "no item ids", "no known item ids", None)
    assert result[1] == result[2] == [] and result[0] == result[3] and len(result[0]) == 5
    assert result.num_failed == 2 and result.unknown_ids == (0, 0, 2, 0)
    with pytest.raises(recommend.EmptyHistoryError, match=r"histories\[2\] has no item ids"):
        rec.recommend([known, known, []], k=5, strict=True)
    with pytest.raises(recommend.UnknownItemError, match=r"histories\[0\]: item id 'no-such"):
        rec.recommend([unknown], k=5, strict=True)
    with pytest.raises(ValueError, match=f"k=41: must be in 1..{NUM_ITEMS}"):
        rec.recommend([known], k=NUM_ITEMS + 1)
    with pytest.raises(TypeError, match=r"histories\[0\]: expected a sequence"):
        rec.recommend(known, k=5)  # one history, not a list of them


def test_batched_and_numpy_histories_match_one_at_a_time(random_export):
    output, vocabulary, rec = random_export
    in_fours = recommend.Recommender.load(output, batch_size=4)  # 2 batches, the second padded
    rng = np.random.default_rng(0)
    histories = [
        vocabulary[rng.integers(1, NUM_ITEMS + 1, size=n)].tolist() for n in (1, 3, 11, 20, 5, 2, 7)
    ]
    together = in_fours.recommend(histories, k=8)
    as_arrays = in_fours.recommend([np.asarray(h) for h in histories], k=8)
    for history, batched, from_array in zip(histories, together, as_arrays, strict=True):
        alone = rec.recommend([history], k=8)[0]
        assert [i for i, _ in batched] == [i for i, _ in alone] == [i for i, _ in from_array]
        np.testing.assert_allclose([s for _, s in batched], [s for _, s in alone], atol=1e-5)
        assert all(type(i) is type(vocabulary[1].item()) for i, _ in batched)


@pytest.mark.parametrize(
    "damage, name",
    [
        ("flip", artifact.SERVING_FN),
        ("flip", artifact.PARAMS),
        ("flip", artifact.VOCABULARY),
        ("delete", artifact.ITEM_EMBEDDINGS),
        ("delete", artifact.MANIFEST),
    ],
)
def test_damaged_artifact_is_refused_naming_the_file(random_export, tmp_path, damage, name):
    output, _, _ = random_export
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    target = copy / name
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(artifact.ArtifactError, match=re.escape(str(target))):
        recommend.Recommender.load(copy)


def test_export_refuses_a_non_empty_output(random_export):
    output, vocabulary, _ = random_export
    model, params = random_model()
    with pytest.raises(FileExistsError, match=re.escape(str(output))):
        export.export_model(model, params, vocabulary, output, saved_model=False)


def test_input_files_name_the_bad_line(tmp_path):
    csv_file = tmp_path / "users.csv"
    csv_file.write_text('u1,sku-001, sku-002\n\nu2,"sku-003"\n')
    users, histories, labels = recommend.read_histories(csv_file)
    assert users == ["u1", "u2"]
    assert histories == [["sku-001", "sku-002"], ["sku-003"]]
    assert labels[1] == f"{csv_file}:3 (user 'u2')"
    jsonl = tmp_path / "users.jsonl"
    jsonl.write_text('{"user": 7, "history": [1, 2]}\n{"user": 8, "items": [3]}\n')
    with pytest.raises(recommend.InputFileError, match=re.escape(f"{jsonl}:2: expected an object")):
        recommend.read_histories(jsonl)


# ---- a tiny run trained on the 8 test devices, exported by a 1-device process (slow) ----------


@pytest.fixture(scope="module")
def trained(tiny_finished_run, tmp_path_factory):
    """(experiment, params, export directory, its Recommender): conftest's tiny run, trained on
    the 8 test devices, exported by a 1-device process."""
    run = tiny_finished_run
    output = tmp_path_factory.mktemp("trained") / "export"
    printed = run_cli(
        "bert4rec_jax.export", f"--workdir={run.workdir}", f"--output={output}", "--top_k=20"
    ).stdout
    params, step = checkpointing.restore_params(run.workdir, "best")
    assert f"Exported synthetic step {step} (best)" in printed
    exp = experiment.Experiment.from_run(RunConfig.from_config_dict(run.config))
    return exp, params, output, recommend.Recommender.load(output)


def corpus_histories(exp, batch):
    """Test-split inputs of the corpus's users, repeated to `batch` rows: (history, ids, pos)."""
    ids, mask_pos = build_inputs(exp.corpus, exp.split, "test", exp.config.model.max_len)
    rows = np.arange(batch) % len(ids)
    ids, mask_pos = ids[rows], mask_pos[rows]
    history = np.where(ids == exp.corpus.mask_id, 0, ids)[:, :-1]  # [batch, max_len - 1]
    return history, ids, mask_pos


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 1000])
def test_exported_scores_equal_in_process_scores(trained, batch):
    exp, params, _, rec = trained
    history, ids, mask_pos = corpus_histories(exp, batch)
    got_ids, got_scores = rec.run(history, exclude_seen=True)  # [batch, top_k]

    fns = exp.scoring_fns
    h = jax.jit(fns.encode)(params, ids, mask_pos)
    items = np.arange(1, exp.corpus.num_items + 1, dtype=np.int32)
    want = np.asarray(jax.jit(fns.score)(params, h, items))  # [batch, V]
    seen = np.zeros((batch, exp.corpus.num_items + 1), bool)
    seen[np.arange(batch)[:, None], history] = True
    want = np.where(seen[:, 1:], -np.inf, want)
    # The returned items score what the model scores them, and they are its best ones.
    np.testing.assert_allclose(
        got_scores, np.take_along_axis(want, got_ids - 1, axis=1), rtol=1e-5, atol=1e-5
    )
    best = -np.sort(-want, axis=1)[:, : rec.top_k]
    np.testing.assert_allclose(got_scores, best, rtol=1e-5, atol=1e-5)
    assert not seen[np.arange(batch)[:, None], got_ids].any()


@pytest.mark.slow
def test_saved_model_in_tensorflow_returns_the_same_top_k(trained):
    import tensorflow as tf

    exp, _, output, rec = trained
    history, _, _ = corpus_histories(exp, 1000)  # the batch size the test above compiled
    exclude = np.arange(1000) % 2 == 0  # the flag is per row
    loaded = tf.saved_model.load(str(output / artifact.SAVED_MODEL_DIR))
    out = loaded.signatures[export.SIGNATURE](
        history=tf.constant(history),
        users=tf.zeros([1000], tf.int32),
        exclude_seen=tf.constant(exclude),
    )
    for flag in (True, False):
        want_ids, want_scores = rec.run(history, exclude_seen=flag)
        rows = exclude == flag
        np.testing.assert_array_equal(out[export.ITEM_IDS].numpy()[rows], want_ids[rows])
        np.testing.assert_allclose(
            out[export.SCORES].numpy()[rows], want_scores[rows], rtol=1e-5, atol=1e-5
        )


@pytest.mark.slow
def test_recommend_cli_prints_raw_ids_on_one_device(trained, tmp_path):
    exp, _, output, rec = trained
    corpus = exp.corpus
    history = corpus.raw_item_ids[corpus.sequence(3)].tolist()
    printed = run_cli(
        "bert4rec_jax.recommend",
        f"--model={output}",
        "--history=" + ",".join(map(str, history + [999999])),
        "--k=5",
    )
    rows = [line.split() for line in printed.stdout.strip().splitlines()[1:]]
    want = rec.recommend([history], k=5)[0]
    assert [int(item) for _, item, _ in rows] == [item for item, _ in want]
    np.testing.assert_allclose([float(s) for *_, s in rows], [s for _, s in want], atol=1e-4)
    assert "Skipped 1 unknown item ids" in printed.stderr

    # A file of histories, JSON lines in and out; a bad line fails naming it.
    lines = [{"user": "a", "history": history}, {"user": 2, "history": history[:2] + ["x"]}]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = tmp_path / "results.jsonl"
    run_cli("bert4rec_jax.recommend", f"--model={output}", f"--input={requests}",
            f"--output={results}", "--k=5")  # fmt: skip
    written = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["user"] for r in written] == ["a", 2]
    assert [r["unknown_ids"] for r in written] == [0, 1]
    assert [r["item"] for r in written[0]["recommendations"]] == [item for item, _ in want]
    failed = run_cli("bert4rec_jax.recommend", f"--model={output}", f"--input={requests}",
                     "--strict", check=False)  # fmt: skip
    assert failed.returncode != 0
    assert f"{requests}:2 (user 2): item id 'x' is not in the model's vocabulary" in failed.stderr


def test_version_difference_is_a_warning_not_a_refusal(random_export, tmp_path, caplog):
    output, _, _ = random_export
    copy = tmp_path / "copy"
    shutil.copytree(output, copy)
    path = copy / artifact.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["versions"]["jax"] = "0.0.1"
    path.write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        rec = recommend.Recommender.load(copy)
    assert f"jax 0.0.1 (running {jax.__version__})" in caplog.text
    assert rec.top_k == NUM_ITEMS


def test_progress_redraws_on_a_terminal_and_prints_plain_lines_otherwise():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = recommend.Progress(100, "rows", stream)
        progress.update(50, 10)
        progress.update(100, 20, final=True)
    assert terminal.getvalue().startswith("\r[") and " ETA " in terminal.getvalue()
    assert terminal.getvalue().count("\n") == 1  # only the final line ends one
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert "100/100 rows, 20 users" in lines[1]


def test_interactions_csv_is_streamed_by_user_in_time_order(random_export, tmp_path):
    _, vocabulary, rec = random_export
    raw = vocabulary.tolist()
    csv_file = tmp_path / "interactions.csv"
    # u1's rows out of time order; u2 has only unknown items; u3 a single item.
    csv_file.write_text(
        "user,item,timestamp\n"
        f"u1,{raw[5]},30\nu1,{raw[7]},10\nu1,{raw[9]},20\n"
        "u2,no-such-item,5\n"
        f"u3,{raw[2]},1\n"
    )
    records = [r for r, _ in recommend.iter_interactions(csv_file)]
    assert [r[0] for r in records] == ["u1", "u2", "u3"]
    assert [list(map(str, r[1])) for r in records][0] == [str(raw[7]), str(raw[9]), str(raw[5])]
    out = tmp_path / "recs.jsonl"
    writer = recommend.OutputWriter(str(out), rec.vocabulary.dtype)
    summary = recommend.recommend_all(
        rec, recommend.iter_interactions(csv_file), writer, k=3, chunk_users=2
    )
    writer.close()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user"] for r in rows] == ["u1", "u2", "u3"]
    assert rows[1]["error"] == "no known item ids" and rows[1]["recommendations"] == []
    want = rec.recommend([[raw[7], raw[9], raw[5]]], k=3)[0]
    assert [x["item"] for x in rows[0]["recommendations"]] == [item for item, _ in want]
    assert (summary.users, summary.served, dict(summary.errors)) == (
        3, 2, {"no known item ids": 1}
    )  # fmt: skip


def test_numpy_histories_are_mapped_like_lists(random_export):
    # Arrays of the vocabulary's kind take a vectorised path (the job's readers give them):
    # the same ids, counts, errors and refusals as the one-id-at-a-time path.
    _, vocabulary, rec = random_export
    unknown = "no-such-item" if vocabulary.dtype.kind == "U" else 123456789
    histories = [
        vocabulary[[5, 6, 7]].tolist(),
        [],
        [unknown, unknown],
        [vocabulary[3].item(), unknown, vocabulary[9].item()],
        vocabulary[1 : NUM_ITEMS + 1].tolist(),
    ]
    kind = str if vocabulary.dtype.kind == "U" else np.int64  # str: as wide as each needs
    arrays = [np.asarray(h, kind) for h in histories]
    want, got = rec.encode(histories), rec.encode(arrays)
    assert got.errors == want.errors == [None, "no item ids", "no known item ids", None, None]
    np.testing.assert_array_equal(got.unknown_ids, want.unknown_ids)
    for a, b in zip(got.histories, want.histories, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype == np.int32
    assert rec.recommend(arrays, k=5) == rec.recommend(histories, k=5)
    # Object arrays (a Parquet string column); None is an unknown id, as in a list.
    with_none = [*histories, [vocabulary[3].item(), None]]
    object_arrays = [np.asarray(h, object) for h in with_none]
    objects = rec.encode(object_arrays)
    # The vectorised path is taken for typed arrays, and for object arrays of strings.
    assert rec.ids.map_arrays(arrays, strict=False) is not None
    vectorised = rec.ids.map_arrays(object_arrays, strict=False) is not None
    assert vectorised == (vocabulary.dtype.kind == "U")
    want = rec.encode(with_none)
    assert objects.errors == want.errors
    np.testing.assert_array_equal(objects.unknown_ids, want.unknown_ids)
    for a, b in zip(objects.histories, want.histories, strict=True):
        np.testing.assert_array_equal(a, b)
    for bad, message in (
        ([arrays[0], arrays[3]], rf"histories\[1\]: item id {re.escape(repr(unknown))}"),
        ([arrays[0], arrays[1]], r"histories\[1\] has no item ids"),
    ):
        refused = (recommend.UnknownItemError, recommend.EmptyHistoryError)
        with pytest.raises(refused, match=message):
            rec.recommend(bad, k=5, strict=True)


def test_interactions_split_across_batches_keep_time_order(random_export, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, vocabulary, _ = random_export
    rng = np.random.default_rng(0)
    users = np.repeat(["a", "b", "c", "d"], [5, 1, 7, 4])
    # a: in time order; b: one row; c: out of order with ties, across two batches; d: reversed.
    stamps = np.array([1, 2, 2, 3, 9, 4, 5, 1, 5, 0, 5, 2, 1, 9, 8, 7, 6])
    items = vocabulary[rng.integers(1, NUM_ITEMS + 1, size=len(users))]
    path = tmp_path / "interactions.parquet"
    pq.write_table(pa.table({"user": users, "item": items, "timestamp": stamps}), path)
    for batch_rows in (3, 6, 100):
        records = list(recommend.iter_interactions(path, batch_rows=batch_rows))
        assert [r[0] for r, _ in records] == ["a", "b", "c", "d"]
        assert [done for _, done in records] == [5, 6, 13, 17]
        for (user, history, _), _ in records:
            rows = np.flatnonzero(users == user)
            want = items[rows][np.argsort(stamps[rows], kind="stable")]
            assert history.tolist() == want.tolist(), (batch_rows, user)


def test_a_strict_job_writes_the_chunks_before_the_bad_user(random_export, tmp_path):
    # Chunks overlap (one runs while the next is read), yet a refusal in the third chunk
    # leaves the first two written, as when they ran one after the other.
    _, vocabulary, rec = random_export
    good = vocabulary[[4, 5, 6]]
    records = [((f"u{i}", good, f"user {i}"), i + 1) for i in range(5)]
    records.append((("bad", np.asarray([], vocabulary.dtype), "user bad"), 6))
    out = tmp_path / "recs.jsonl"
    writer = recommend.OutputWriter(str(out), rec.vocabulary.dtype)
    with pytest.raises(recommend.EmptyHistoryError, match="user bad has no item ids"):
        recommend.recommend_all(rec, iter(records), writer, k=3, strict=True, chunk_users=2)
    writer.close()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user"] for r in rows] == ["u0", "u1", "u2", "u3"]
