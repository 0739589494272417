"""The site's operating point (pipeline.evaluation.site) against values computed by hand."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.stats import binom

from pipeline.evaluation import site
from pipeline.model.calibration import Calibration, fit as platt
from pipeline.settings import config


@pytest.fixture
def settings():
    return config.load_params().site


def test_clopper_pearson_lower_bound_by_hand():
    # all n positives found: the one-sided bound solves L**n = 1 - confidence
    assert site.clopper_pearson(10, 10, 0.6, side="lower")[0] == pytest.approx(0.4 ** 0.1, abs=1e-9)
    # otherwise P(X >= k | n, L) = 1 - confidence at the bound (exact binomial tail)
    lo = site.clopper_pearson(45, 50, 0.8, side="lower")[0]
    assert binom.sf(44, 50, lo) == pytest.approx(0.2, abs=1e-6)
    lo2, hi2 = site.clopper_pearson(45, 50, 0.95)
    assert binom.sf(44, 50, lo2) == pytest.approx(0.025, abs=1e-6)
    assert binom.cdf(45, 50, hi2) == pytest.approx(0.025, abs=1e-6)


def test_bounded_threshold_keeps_the_bound_not_the_point_estimate():
    # 20 positives at 0.99, 0.98, ..., 0.80; 0.6 confidence, target 0.85
    prob = np.round(np.linspace(0.99, 0.80, 20), 4)
    y = np.ones(20, int)
    t = site.bounded_threshold(y, prob, 0.85, 0.6)
    # by hand: the point estimate k/20 >= 0.85 is reached at k=17 (t=0.83); the bound needs k=19:
    # L(17)=0.797, L(18)=0.849 < 0.85, L(19)=0.901  (beta.ppf(0.4, k, 21-k))
    assert site.clopper_pearson(18, 20, 0.6, "lower")[0] < 0.85 <= site.clopper_pearson(19, 20, 0.6, "lower")[0]
    assert t == pytest.approx(prob[18])
    # negatives do not count; the threshold is a positive's probability
    t2 = site.bounded_threshold(np.r_[y, np.zeros(5, int)], np.r_[prob, [0.995] * 5], 0.85, 0.6)
    assert t2 == t


def test_cross_fitting_answers_each_fold_with_the_others_fit(settings):
    rng = np.random.default_rng(1)
    n = 150
    y = (rng.random(n) < 0.6).astype(int)
    z = rng.normal(0, 1, n) + 2.5 * y + 1.0
    groups = [f"patient{i // 3}" for i in range(n)]  # three films per patient
    prob, thr = site.cross_fitted(z, y, groups, settings)
    fold = site.folds_of(groups, settings.folds)
    for g in set(groups):  # a patient's films are in one fold
        assert len(set(fold[[i for i, x in enumerate(groups) if x == g]])) == 1
    for f in range(settings.folds):
        held = fold == f
        cal = platt(z[~held], y[~held], min_slope=site.MIN_SLOPE)   # by hand: Platt on the other folds...
        t = site.bounded_threshold(y[~held], cal.probability(z[~held]), settings.target_sensitivity,
                                   settings.confidence)   # ...and their bounded threshold
        assert np.allclose(prob[held], cal.probability(z[held]))
        assert np.all(thr[held] == t)


def test_fit_refuses_too_few_cases_or_one_class(settings):
    z = np.linspace(-3, 3, 40)
    few = site.fit(z, (z > 0).astype(int), range(40), (Calibration(), 0.5), settings)
    assert not few.accepted and few.calibration is None
    assert "40 confirmed cases, at least 50 are needed" in few.reason
    z = np.linspace(-3, 3, 80)
    one = site.fit(z, np.ones(80, int), range(80), (Calibration(), 0.5), settings)
    assert not one.accepted and "0 NORMAL, at least 15 are needed" in one.reason


def test_fit_serves_a_better_answer_and_refuses_a_worse_one(settings):
    rng = np.random.default_rng(0)
    n = 200
    y = (rng.random(n) < 0.6).astype(int)
    z = rng.normal(0, 1, n) + 3.0 * y + 1.5        # a site where the served scale calls most NORMAL films PNEUMONIA
    served = (Calibration(1.6, 3.8), 0.83)
    good = site.fit(z, y, range(n), served, settings)
    assert good.accepted, good.reason
    assert good.after.specificity > good.before.specificity + 0.3 and good.after.ece < good.before.ece
    assert good.after.sensitivity >= settings.floors["sensitivity"]
    # the served fit is the one on all cases
    cal = platt(z, y, min_slope=site.MIN_SLOPE)
    assert good.calibration.a == pytest.approx(cal.a) and good.calibration.b == pytest.approx(cal.b)
    # already at the site's own fit: nothing to gain, nothing served
    same = site.fit(z, y, range(n), (good.calibration, good.threshold), settings)
    assert not same.accepted and any("no gain" in c or "Youden" in c for c in same.checks)
    # floors are checked out of fold
    strict = dataclasses.replace(settings, floors={"specificity": 0.999})
    assert not site.fit(z, y, range(n), served, strict).accepted


def test_a_site_fit_never_turns_the_ranking_around(settings):
    rng = np.random.default_rng(2)
    y = (rng.random(120) < 0.5).astype(int)
    z = -(rng.normal(0, 1, 120) + 3.0 * y)          # a network that ranks this site's films backwards
    fitted = site.fit(z, y, range(120), (Calibration(), 0.5), settings)
    assert fitted.calibration.a == pytest.approx(site.MIN_SLOPE)   # flattened, not flipped
    assert not fitted.accepted and any("floor" in c for c in fitted.checks)
