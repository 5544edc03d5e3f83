"""Tests for bert4rec_jax.recommend.ids: raw ids to dense ids, unknown ids counted or refused,
the vectorised path."""

import re

import numpy as np
import pytest
from helpers import RANDOM_ITEMS

from bert4rec_jax import recommend


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
    with pytest.raises(ValueError, match=f"k=41: must be in 1..{RANDOM_ITEMS}"):
        rec.recommend([known], k=RANDOM_ITEMS + 1)
    with pytest.raises(TypeError, match=r"histories\[0\]: expected a sequence"):
        rec.recommend(known, k=5)  # one history, not a list of them


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
        vocabulary[1 : RANDOM_ITEMS + 1].tolist(),
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
