"""The threshold rules and the paired bootstrap under shift, against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation import compare, evaluate


def test_threshold_rules_by_hand():
    y = np.array([1, 1, 1, 1, 0, 0])
    clean = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
    shifted = {"a": np.array([0.9, 0.8, 0.5, 0.4, 0.3, 0.2]),   # two positives fall under 0.6
               "b": np.array([0.95, 0.85, 0.75, 0.65, 0.35, 0.25])}
    # target 0.75 of 4 positives = 3 positives above threshold
    assert evaluate.robust_threshold(y, clean, y, shifted, 0.75, "clean") == pytest.approx(0.7)
    assert evaluate.robust_threshold(y, clean, y, shifted, 0.75, "worst") == pytest.approx(0.5)
    # pooled: shifted positives only (8, need 6): .95 .9 .85 .8 .75 .65 -> 0.65, lower than clean 0.7
    assert evaluate.robust_threshold(y, clean, y, shifted, 0.75, "pooled") == pytest.approx(0.65)
    # shifts that raise the positives' scores never lift the threshold above the clean one
    easy = {"c": np.array([0.99, 0.98, 0.97, 0.96, 0.3, 0.2])}
    assert evaluate.robust_threshold(y, clean, y, easy, 0.75, "pooled") == pytest.approx(0.7)
    with pytest.raises(ValueError, match="threshold_rule"):
        evaluate.robust_threshold(y, clean, y, shifted, 0.75, "median")


def test_tradeoff_curve_is_monotone_and_matches_the_rule():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.5 * y + rng.normal(0.25, 0.15, 300), 0, 1)
    curve = evaluate.threshold_tradeoff(y, p, {"s": np.clip(p - 0.05, 0, 1)})
    assert np.all(np.diff(curve["sensitivity"]) <= 0) and np.all(np.diff(curve["specificity"]) >= 0)
    assert curve["stress_sensitivity"][50] <= curve["sensitivity"][50]


def test_paired_bootstrap_by_hand_and_its_interval():
    y = np.array([0, 0, 1, 1])
    a = {"s1": np.array([0.1, 0.2, 0.8, 0.9]), "s2": np.array([0.1, 0.9, 0.8, 0.7])}   # AUC 1.0 and 0.5
    b = {"s1": np.array([0.2, 0.1, 0.8, 0.9]), "s2": np.array([0.2, 0.1, 0.8, 0.9])}   # AUC 1.0 and 1.0
    r = compare.paired_bootstrap(y, a, b, resamples=50)
    assert r.mean_a == pytest.approx(0.75) and r.mean_b == pytest.approx(1.0) and r.delta == pytest.approx(-0.25)


def test_paired_bootstrap_separates_a_better_model_and_not_a_copy():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    truth = {f"shift{i}": y + rng.normal(0, 0.6, 200) for i in range(5)}
    worse = {k: v + rng.normal(0, 1.0, 200) for k, v in truth.items()}
    better = compare.paired_bootstrap(y, truth, worse, resamples=200)
    assert better.low > 0
    same = compare.paired_bootstrap(y, truth, truth, resamples=200)
    assert same.delta == 0 and same.low == 0 and same.high == 0
