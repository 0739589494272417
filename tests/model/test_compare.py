"""DeLong's paired AUC test checked against hand-computed placements and the paired bootstrap."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.compare import delong


def brute_force(y, a, b):
    """DeLong from its definition: psi over every (positive, negative) pair (O(n^2))."""
    y = np.asarray(y)

    def components(s):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(), psi.mean(axis=1), psi.mean(axis=0)

    auc_a, v10a, v01a = components(np.asarray(a, float))
    auc_b, v10b, v01b = components(np.asarray(b, float))
    m, n = len(v10a), len(v01a)
    s10, s01 = np.cov([v10a, v10b]), np.cov([v01a, v01b])
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return auc_a, auc_b, np.sqrt(var)


def test_small_example_by_hand():
    y = [1, 1, 0, 0]
    a = [0.9, 0.4, 0.5, 0.1]     # pairs (pos > neg): 0.9>0.5, 0.9>0.1, 0.4>0.1 -> 3/4
    b = [0.9, 0.8, 0.5, 0.1]     # every pair ordered -> 1
    r = delong(y, a, b)
    assert r.auc_a == pytest.approx(0.75) and r.auc_b == pytest.approx(1.0)
    assert r.delta == pytest.approx(-0.25)
    # placements of a: positives (1, 1/2), negatives (1/2, 1); of b: all ones -> var of a only
    # var = var(1, .5)/2 + var(.5, 1)/2 = 0.125/2 + 0.125/2 = 0.125
    assert r.se == pytest.approx(np.sqrt(0.125))


def test_matches_the_definition_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    a = np.round(y + rng.normal(0, 1, 120), 1)        # rounding makes ties
    b = np.round(y + rng.normal(0, 1.3, 120), 1)
    r = delong(y, a, b)
    auc_a, auc_b, se = brute_force(y, a, b)
    assert (r.auc_a, r.auc_b, r.se) == pytest.approx((auc_a, auc_b, se))


def test_standard_error_agrees_with_the_paired_bootstrap():
    from pipeline.evaluation.compare import _auc_matrix

    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    a = y + rng.normal(0, 1, n)
    b = y + 0.7 * rng.normal(0, 1, n) + 0.7 * (a - y)   # correlated with a, as two models are
    r = delong(y, a, b)
    i = rng.integers(0, n, (1500, n))   # 1500 paired resamples, AUCs computed in one batch
    deltas = _auc_matrix(y[i], a[i]) - _auc_matrix(y[i], b[i])
    assert r.se == pytest.approx(np.std(deltas), rel=0.1)
    assert r.low < r.delta < r.high


def test_identical_models_show_no_difference():
    y = [0, 1, 0, 1, 1]
    s = [0.2, 0.7, 0.4, 0.9, 0.3]
    r = delong(y, s, s)
    assert (r.delta, r.se, r.p_value) == (0.0, 0.0, 1.0)


def test_needs_both_classes():
    with pytest.raises(ValueError, match="at least 2 positives and 2 negatives"):
        delong([1, 1, 1, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])
