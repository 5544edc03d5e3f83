"""Tests for bert4rec_jax.scoring: where a user's history goes in the model's input ([MASK] last,
truncation, the split modes)."""

import numpy as np
from helpers import make_corpus

from bert4rec_jax import evaluation as ev
from bert4rec_jax import scoring
from bert4rec_jax.datasets.corpus import leave_one_out

# ---- inputs ---------------------------------------------------------------------------------


def test_inputs_valid_and_test_truncation():
    corpus = make_corpus([list(range(1, 11)), [11, 12, 13], [14, 15, 16, 17]])
    split = leave_one_out(corpus)
    max_len = 5
    valid_ids, valid_pos = scoring.build_inputs(corpus, split, "valid", max_len)
    test_ids, test_pos = scoring.build_inputs(corpus, split, "test", max_len)
    mask = corpus.mask_id
    # User 0: 1..10; valid target 9, test target 10; the last max_len - 1 = 4 items are kept.
    np.testing.assert_array_equal(valid_ids[0], [5, 6, 7, 8, mask])
    np.testing.assert_array_equal(test_ids[0], [6, 7, 8, 9, mask])
    # User 1: 11, 12, 13; valid input = [11], test input = [11, 12]; padding after [MASK].
    np.testing.assert_array_equal(valid_ids[1], [11, mask, 0, 0, 0])
    np.testing.assert_array_equal(test_ids[1], [11, 12, mask, 0, 0])
    np.testing.assert_array_equal(valid_pos, [4, 1, 2])
    np.testing.assert_array_equal(test_pos, [4, 2, 3])
    assert valid_ids.dtype == np.int32 and valid_pos.dtype == np.int32
    for row in range(3):
        # The test input ends with the validation item; the validation input never holds it.
        assert test_ids[row, test_pos[row] - 1] == split.valid_targets[row]
        assert split.valid_targets[row] not in valid_ids[row]
        assert split.test_targets[row] not in test_ids[row]


def test_inputs_paper_mode_same_histories():
    corpus = make_corpus([list(range(1, 11)), [11, 12, 13]])
    for which in ev.SPLITS:
        a = scoring.build_inputs(corpus, leave_one_out(corpus, "standard"), which, 6)
        b = scoring.build_inputs(corpus, leave_one_out(corpus, "paper"), which, 6)
        np.testing.assert_array_equal(a[0], b[0])
