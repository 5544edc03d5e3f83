"""Tests of evaluation/stats.py: the paired bootstrap on simulated users, the t-interval."""

import math

import numpy as np
import pytest

from bert4rec_jax.evaluation.stats import paired_bootstrap, t_interval


def test_interval_covers_a_known_effect_in_about_95_of_100_simulations():
    effect, covered, rejected_without_effect = 0.02, 0, 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        easy = rng.uniform(0, 1, 300)  # what every user finds easy or hard: paired away
        a = easy + rng.normal(0, 0.3, 300)
        b = easy + effect + rng.normal(0, 0.3, 300)
        [found] = paired_bootstrap(a[None], b[None], resamples=1000, seed=seed)
        covered += found.low <= effect <= found.high
        [null] = paired_bootstrap(a[None], (easy + rng.normal(0, 0.3, 300))[None], resamples=1000)
        rejected_without_effect += null.p_value < 0.05
    assert 90 <= covered <= 99
    assert 1 <= rejected_without_effect <= 10  # the test's size: about 5 in 100


def test_pooled_seeds_keep_run_to_run_variation_in_the_interval():
    # Each run (seed) shifts all its users at once. Averaging a side's seeds and resampling only
    # users would miss that; resampling the runs too keeps it.
    effect, pooled, users_only = 0.02, 0, 0
    for seed in range(100):
        rng = np.random.default_rng(1000 + seed)
        easy = rng.uniform(0, 1, 200)

        def side(shift, easy=easy, rng=rng):
            return easy + shift + rng.normal(0, 0.03, (5, 1)) + rng.normal(0, 0.3, (5, 200))

        a, b = side(0.0), side(effect)
        [found] = paired_bootstrap(a, b, resamples=500, seed=seed)
        pooled += found.low <= effect <= found.high
        [naive] = paired_bootstrap(a.mean(0)[None], b.mean(0)[None], resamples=500, seed=seed)
        users_only += naive.low <= effect <= naive.high
        assert found.difference == pytest.approx(b.mean() - a.mean())
    assert pooled >= 88
    assert users_only <= 80


def test_t_interval_hand_computed():
    mean, half = t_interval([0.30, 0.32, 0.34])
    assert mean == pytest.approx(0.32)
    assert half == pytest.approx(4.302652729911275 * 0.02 / math.sqrt(3))  # t(2 df, 97.5%)
    assert math.isnan(t_interval([0.5])[1])


def test_bootstrap_refuses_mismatched_sides():
    with pytest.raises(ValueError, match=r"must be \[metrics, runs, users\] alike"):
        paired_bootstrap(np.zeros((1, 1, 3)), np.zeros((1, 1, 4)))
