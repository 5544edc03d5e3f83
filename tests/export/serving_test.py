"""Tests for bert4rec_jax.export.serving: the served functions against in-process scoring, the
SavedModel in TensorFlow and in a process without jax, whole-history exclusion (real ML-100K
histories, many longer than max_len)."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from helpers import SERVED_TOP_K, dense_histories, in_process_top_k

from bert4rec_jax import export
from bert4rec_jax.export import artifact
from bert4rec_jax.scoring import build_inputs


@pytest.mark.slow
def test_saved_model_without_jax_excludes_the_whole_history(served, tmp_path):
    exp, params, output = served.exp, served.params, served.output
    histories = dense_histories(exp.corpus)
    assert sum(len(h) > exp.config.model.max_len for h in histories) > 500
    width = max(len(h) for h in histories)
    padded = np.zeros((len(histories), width), np.int32)
    for row, h in enumerate(histories):
        padded[row, : len(h)] = h
    np.save(tmp_path / "history.npy", padded)
    # docs/serving.md's TensorFlow-only client, in a process where jax cannot be imported.
    script = textwrap.dedent(f"""
        import sys
        sys.modules["jax"] = None
        import numpy as np
        import tensorflow as tf

        with np.load({str(output / "vocabulary.npz")!r}) as saved:
            if "raw_ids" in saved:  # integer ids
                vocabulary = saved["raw_ids"]
            else:  # string ids by length: id i is utf8[offsets[i]:offsets[i + 1]]
                offsets, utf8 = saved["raw_ids__offsets"], saved["raw_ids__utf8"].tobytes()
                vocabulary = np.array([utf8[a:b].decode() for a, b in zip(offsets, offsets[1:])])
        assert vocabulary.tolist() == {exp.corpus.raw_item_ids.tolist()!r}

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
    assert ids.shape == (len(histories), SERVED_TOP_K)
    seen = sum(len(np.intersect1d(ids[row], h)) for row, h in enumerate(histories))
    assert seen == 0
    want_ids, want_scores = in_process_top_k(exp, params, histories)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    # Ids agree except where two items' scores tie to float precision.
    assert (ids == want_ids).mean() > 0.999


def corpus_histories(exp, batch):
    """Test-split inputs of the corpus's users, repeated to `batch` rows: (history, ids, pos)."""
    ids, mask_pos = build_inputs(exp.corpus, exp.split, "test", exp.config.model.max_len)
    rows = np.arange(batch) % len(ids)
    ids, mask_pos = ids[rows], mask_pos[rows]
    history = np.where(ids == exp.corpus.mask_id, 0, ids)[:, :-1]  # [batch, max_len - 1]
    return history, ids, mask_pos


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 1000])
def test_exported_scores_equal_in_process_scores(tiny_export, batch):
    exp, params, rec = tiny_export.exp, tiny_export.params, tiny_export.rec
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
def test_saved_model_in_tensorflow_returns_the_same_top_k(tiny_export):
    import tensorflow as tf

    exp, output, rec = tiny_export.exp, tiny_export.output, tiny_export.rec
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
