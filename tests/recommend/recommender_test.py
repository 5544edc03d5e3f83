"""Tests for bert4rec_jax.recommend.recommender: exclusion of seen items, batching, version
warnings, exactly k items and the same top-k as MIPS over the exported vectors."""

import json
import shutil

import jax
import numpy as np
import pytest
from helpers import POPULAR, RANDOM_ITEMS, SERVED_TOP_K, dense_histories

from bert4rec_jax import recommend
from bert4rec_jax.export import artifact


def test_seen_items_never_come_back_unless_allowed(random_export):
    _, vocabulary, rec = random_export
    popular = vocabulary[list(POPULAR)].tolist()
    others = vocabulary[10:14].tolist()
    # Everything is returned (k = all items), so an excluded item has nowhere to hide.
    excluded = rec.recommend([popular + others], k=RANDOM_ITEMS)[0]
    returned = [item for item, _ in excluded]
    assert not set(returned) & set(popular + others)
    assert len(returned) == RANDOM_ITEMS - len(popular + others)
    assert vocabulary[0].item() not in returned  # padding never comes back
    included = rec.recommend([popular + others], k=RANDOM_ITEMS, exclude_seen=False)[0]
    assert sorted(item for item, _ in included[:3]) == sorted(popular)
    assert len(included) == RANDOM_ITEMS
    scores = [score for _, score in included]
    assert scores == sorted(scores, reverse=True)

    # An item older than the window the model reads is excluded too, by the exported function:
    # every unseen item still comes back, so k = all unseen items gives exactly that many.
    width = rec.history_length
    long_history = popular[:1] + vocabulary[4 : 4 + width].tolist()  # popular[0] falls out
    unseen = RANDOM_ITEMS - len(long_history)
    returned = [item for item, _ in rec.recommend([long_history], k=unseen)[0]]
    assert len(returned) == unseen and not set(returned) & set(long_history)
    assert popular[1] == returned[0] or popular[2] == returned[0]
    ids, scores = rec.run([np.asarray([1] + list(range(4, 4 + width)), np.int32)])
    assert 1 not in ids[0, :unseen] and np.isneginf(scores[0, unseen:]).all()


def test_batched_and_numpy_histories_match_one_at_a_time(random_export):
    output, vocabulary, rec = random_export
    in_fours = recommend.Recommender.load(output, batch_size=4)  # 2 batches, the second padded
    rng = np.random.default_rng(0)
    histories = [
        vocabulary[rng.integers(1, RANDOM_ITEMS + 1, size=n)].tolist()
        for n in (1, 3, 11, 20, 5, 2, 7)
    ]
    together = in_fours.recommend(histories, k=8)
    as_arrays = in_fours.recommend([np.asarray(h) for h in histories], k=8)
    for history, batched, from_array in zip(histories, together, as_arrays, strict=True):
        alone = rec.recommend([history], k=8)[0]
        assert [i for i, _ in batched] == [i for i, _ in alone] == [i for i, _ in from_array]
        np.testing.assert_allclose([s for _, s in batched], [s for _, s in alone], atol=1e-5)
        assert all(type(i) is type(vocabulary[1].item()) for i, _ in batched)


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
    assert rec.top_k == RANDOM_ITEMS


@pytest.mark.slow
def test_recommend_returns_exactly_k_and_matches_mips(served):
    exp, rec = served.exp, served.rec
    corpus = exp.corpus
    raw = [corpus.raw_item_ids[h] for h in dense_histories(corpus)]
    result = rec.recommend(raw, k=rec.top_k)
    assert result.errors == (None,) * len(raw)
    assert all(len(items) == SERVED_TOP_K for items in result)
    for items, history in zip(result, raw, strict=True):
        assert not set(item for item, _ in items) & set(history.tolist())

    # Exact maximum-inner-product search over the exported vectors, as docs/serving.md's numpy does.
    encoded = rec.encode(raw)
    users = rec.user_vectors(encoded.histories)  # [n, H + 1]
    table = np.load(rec.directory / artifact.ITEM_EMBEDDINGS)[1 : corpus.num_items + 1]
    bias = np.load(rec.directory / artifact.OUTPUT_BIAS)[1 : corpus.num_items + 1]
    items = np.concatenate([table, bias[:, None]], axis=1)  # [V, H + 1]
    np.testing.assert_array_equal(items, rec.item_vectors())
    scores = users @ items.T  # [n, V]
    for row, h in enumerate(encoded.histories):
        scores[row, h - 1] = -np.inf
    best = np.argsort(-scores, axis=1, kind="stable")[:, :SERVED_TOP_K]
    mips = corpus.raw_item_ids[best + 1]
    got = np.array([[item for item, _ in items] for items in result])
    assert (mips == got).mean() > 0.999  # up to float ties
    np.testing.assert_allclose(
        np.take_along_axis(scores, best, axis=1),
        [[score for _, score in items] for items in result],
        rtol=1e-4,
        atol=1e-4,
    )
