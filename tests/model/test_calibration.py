"""Calibration maths checked against hand-computed values and a known generating model."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.model import calibration


def test_ece_and_brier_by_hand():
    y = [0, 1, 1, 1]
    p = [0.1, 0.1, 0.9, 0.9]
    # bin [0.1, 0.2): mean 0.1, observed 0.5 -> 0.4 * 2/4; bin [0.9, 1]: mean 0.9, observed 1 -> 0.1 * 2/4
    assert calibration.ece(y, p) == pytest.approx(0.25)
    assert calibration.brier(y, p) == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)
    bins = calibration.reliability(y, p)
    assert [b["n"] for b in bins] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]


def test_a_calibrated_model_has_ece_near_zero():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 50_000)
    y = rng.uniform(0, 1, p.size) < p
    assert calibration.ece(y, p) < 0.01


def test_platt_fit_recovers_the_generating_slope_and_intercept():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, 40_000)
    true = calibration.Calibration(a=0.4, b=-0.8)
    y = rng.uniform(0, 1, logits.size) < true.probability(logits)
    fitted = calibration.fit(logits, y)
    assert fitted.a == pytest.approx(0.4, abs=0.02)
    assert fitted.b == pytest.approx(-0.8, abs=0.05)
    assert calibration.ece(y, fitted.probability(logits)) < 0.01


def test_fit_stays_finite_on_separable_data_and_keeps_the_order():
    logits = np.array([-9.0, -7.0, -5.0, 5.0, 8.0, 12.0])
    y = np.array([0, 0, 0, 1, 1, 1])
    c = calibration.fit(logits, y)
    p = c.probability(logits)
    assert np.all(np.isfinite([c.a, c.b])) and c.a > 0
    assert np.all(np.diff(p) > 0)
    assert calibration.Calibration.from_dict(c.to_dict()) == c


def test_probability_does_not_overflow():
    p = calibration.Calibration(a=3.0).probability([-1e4, 0.0, 1e4])
    assert p.tolist() == [0.0, 0.5, 1.0]
