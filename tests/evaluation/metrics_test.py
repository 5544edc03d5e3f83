"""Tests for bert4rec_jax.evaluation.metrics: ranks to HR@k, NDCG@k and MRR; the results table."""

import math

import numpy as np
import pytest

from bert4rec_jax import evaluation as ev

# ---- metrics --------------------------------------------------------------------------------


def test_metrics_hand_worked():
    m = ev.ranking_metrics(np.array([0, 1, 4, 25]), ks=(1, 5, 10, 20))
    assert m["hr@1"] == pytest.approx(1 / 4)
    assert m["hr@5"] == pytest.approx(3 / 4)  # ranks 0, 1, 4 are < 5
    assert m["hr@10"] == pytest.approx(3 / 4)
    assert m["hr@20"] == pytest.approx(3 / 4)  # rank 25 is outside every cut-off
    assert m["ndcg@1"] == pytest.approx(1 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert m["ndcg@20"] == pytest.approx(m["ndcg@5"])
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 26) / 4)  # MRR is not cut


def test_metrics_k_larger_than_candidates_counts_everyone():
    # 3 candidates: ranks are 0..2, so HR@100 = 1 and NDCG@100 = mean 1 / log2(rank + 2).
    m = ev.ranking_metrics(np.array([0, 2, 2]), ks=(2, 100))
    assert m["hr@2"] == pytest.approx(1 / 3)
    assert m["hr@100"] == 1.0
    assert m["ndcg@100"] == pytest.approx((1 + 2 / math.log2(4)) / 3)


def test_format_table_has_a_row_per_protocol():
    results = {"pop100/hr@1": 0.5, "pop100/mrr": 0.25, "full/hr@1": 0.125, "num_users": 8.0}
    table = ev.format_table(results)
    lines = table.splitlines()
    assert lines[0].split() == ["protocol", "hr@1", "mrr"]
    assert lines[1].split() == ["pop100", "0.5000", "0.2500"]
    assert lines[2].split() == ["full", "0.1250", "-"]
    assert "num_users: 8" in table
