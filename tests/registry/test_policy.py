"""The promotion policy (params.yaml `promotion`) as a pure function: decide(scores, params)."""
from __future__ import annotations

import json
import math

import pytest

from pipeline.settings import config
from pipeline.mlops.policy import decide

GOOD = {"auc": 0.95, "accuracy": 0.9, "sensitivity": 0.96, "specificity": 0.8, "precision": 0.9, "f1": 0.93,
        "threshold": 0.4, "stress_worst_auc": 0.9, "stress_worst_sensitivity": 0.85,
        "stress_worst_specificity": 0.7, "stress_mean_auc": 0.93}


def interval(delta: float, half: float = 0.004) -> dict:
    return {"delta": delta, "low": delta - half, "high": delta + half}


def scores(challenger: dict, champion: dict | None = None, ch_v: int = 2, champ_v: int = 1,
           test: dict | None = None, stress: dict | None = None, external: dict | None = None) -> dict:
    comparison = None
    if champion is not None:
        comparison = {"test": test or interval(0.0), "stress": stress or interval(0.001)}
        if external:
            comparison["external"] = external
    return {"n_test": 500, "n_stress": 200, "challenger": {"version": ch_v, "metrics": challenger},
            "champion": None if champion is None else {"version": champ_v, "metrics": champion},
            "comparison": comparison}


@pytest.fixture
def params():
    return config.load_params()   # the real policy: floors, worst-shift floors, margin 0.01


def test_first_model_passing_floors_becomes_champion(params):
    d = decide(scores(GOOD), params)
    assert d["promote"] is True
    assert "no champion yet" in d["reason"] and d["champion_version"] is None
    json.dumps(d)  # XCom-ready


def test_first_champion_can_be_left_to_a_person(params):
    d = decide(scores(GOOD), config.apply_overrides(params, {"promotion.first_champion": "manual"}))
    assert d["promote"] is False and "by hand" in d["reason"] and "--version 2" in d["reason"]


@pytest.mark.parametrize("metric,value", [("sensitivity", 0.899), ("specificity", 0.5), ("auc", 0.8)])
def test_floor_blocks_promotion_even_without_champion(params, metric, value):
    d = decide(scores({**GOOD, metric: value}), params)
    assert d["promote"] is False
    assert metric in d["reason"] and "floor" in d["reason"]
    assert d["floors_failed"] and d["floors_failed"][0].startswith(metric)


def test_worst_shift_floor_blocks_a_model_good_in_distribution(params):
    d = decide(scores({**GOOD, "auc": 0.999, "stress_worst_sensitivity": 0.6}), params)
    assert d["promote"] is False and "worst-shift sensitivity 0.6000 < floor 0.7500" in d["reason"]


def test_external_floors_apply_only_when_an_external_set_was_scored(params):
    assert decide(scores(GOOD), params)["promote"] is True
    d = decide(scores({**GOOD, "external_auc": 0.97, "external_sensitivity": 0.97, "external_specificity": 0.55}),
               params)
    assert d["promote"] is False and "external specificity 0.5500 < floor 0.6000" in d["reason"]


def test_better_in_distribution_but_worse_under_shift_is_rejected(params):
    d = decide(scores(GOOD, GOOD, test=interval(0.006, 0.003), stress=interval(-0.02, 0.006)), params)
    assert d["promote"] is False and "significantly worse under shift" in d["reason"]
    assert "held-out +0.0060 [+0.0030, +0.0090]" in d["reason"] and "v1" in d["reason"] and "v2" in d["reason"]


def test_not_shown_non_inferior_is_rejected(params):
    # point estimate slightly positive but the interval reaches below -margin (0.01): too uncertain
    d = decide(scores(GOOD, GOOD, test=interval(0.001, 0.015)), params)
    assert d["promote"] is False and "not shown non-inferior" in d["reason"] and "held-out" in d["reason"]


def test_margin_boundary(params):
    ok = decide(scores(GOOD, GOOD, test={"delta": 0.0, "low": -0.0099, "high": 0.01}), params)
    assert ok["promote"] is True and "non-inferior everywhere" in ok["reason"]
    strict = config.apply_overrides(params, {"promotion.non_inferiority_margin": 0.005})
    assert decide(scores(GOOD, GOOD, test={"delta": 0.0, "low": -0.0099, "high": 0.01}), strict)["promote"] is False


def test_no_gain_under_shift_is_not_promoted(params):
    d = decide(scores(GOOD, GOOD, stress=interval(-0.001, 0.003)), params)
    assert d["promote"] is False and "no gain under shift" in d["reason"]


def test_external_comparison_counts_when_present(params):
    d = decide(scores(GOOD, GOOD, external=interval(-0.03, 0.01)), params)
    assert d["promote"] is False and "significantly worse external" in d["reason"]


def test_missing_comparison_never_promotes(params):
    s = scores(GOOD, GOOD)
    s["comparison"] = None
    d = decide(s, params)
    assert d["promote"] is False and "no paired comparison" in d["reason"]


def test_champion_under_floor_on_todays_data_is_replaced(params):
    # data changed: the champion now misses the specificity floor; a challenger that passes all
    # floors replaces it even though its AUC is not higher
    d = decide(scores({**GOOD, "auc": 0.94}, {**GOOD, "auc": 0.95, "specificity": 0.55}), params)
    assert d["promote"] is True and "under the floors" in d["reason"]


def test_undefined_metric_counts_as_failing_floor(params):
    d = decide(scores({**GOOD, "auc": math.nan}), params)
    assert d["promote"] is False and "auc unavailable" in d["reason"]
    json.dumps(d)


def test_same_version_is_not_promoted_again(params):
    d = decide(scores(GOOD, GOOD, ch_v=3, champ_v=3), params)
    assert d["promote"] is False and "already the champion" in d["reason"]


GOLDEN = {"golden_auc": 0.93, "golden_sensitivity": 0.92, "golden_specificity": 0.75, "golden_ece": 0.04,
          "golden_n": 80}


def with_golden_comparison(s: dict, golden: dict) -> dict:
    s["comparison"]["golden"] = golden
    return s


def test_golden_floors_apply_only_when_a_golden_set_was_scored(params):
    strict = config.apply_overrides(params, {"promotion.golden_floors": {"sensitivity": 0.9, "auc": 0.9}})
    assert decide(scores(GOOD), strict)["promote"] is True   # no golden set: the floors have nothing to judge
    assert decide(scores({**GOOD, **GOLDEN}), params)["promote"] is True   # default: no golden floors
    d = decide(scores({**GOOD, **GOLDEN, "golden_sensitivity": 0.85}), strict)
    assert d["promote"] is False and "golden-set sensitivity 0.8500 < floor 0.9000" in d["floors_failed"]
    # a champion under the golden floors is replaced by a challenger above them
    d = decide(with_golden_comparison(scores({**GOOD, **GOLDEN}, {**GOOD, **GOLDEN, "golden_auc": 0.8}),
                                      interval(0.1)), strict)
    assert d["promote"] is True and "golden-set auc 0.8000 < floor" in d["reason"]


def test_significantly_worse_on_the_golden_set_is_rejected(params):
    worse = with_golden_comparison(scores({**GOOD, **GOLDEN}, {**GOOD, **GOLDEN, "golden_auc": 0.97}),
                                   {"delta": -0.04, "low": -0.07, "high": -0.01})
    d = decide(worse, params)   # better everywhere else, worse on the set nobody could shape
    assert d["promote"] is False and "significantly worse golden set" in d["reason"]
    assert decide(worse, config.apply_overrides(params, {"promotion.golden_no_worse": False}))["promote"] is True
    # a wide interval on a small set is not evidence: the golden set is not in the non-inferiority test
    unsure = with_golden_comparison(scores({**GOOD, **GOLDEN}, {**GOOD, **GOLDEN}), interval(-0.01, 0.05))
    assert decide(unsure, params)["promote"] is True


def test_every_reason_carries_both_models_golden_figures(params):
    d = decide(with_golden_comparison(scores({**GOOD, **GOLDEN}, {**GOOD, **GOLDEN, "golden_auc": 0.91}),
                                      interval(0.02)), params)
    assert ("[golden set, 80 images: challenger AUC 0.9300, sensitivity 0.9200, specificity 0.7500, ECE 0.0400; "
            "champion AUC 0.9100") in d["reason"] and "AUC difference +0.0200 [+0.0160, +0.0240]]" in d["reason"]
    first = decide(scores({**GOOD, **GOLDEN}), params)
    assert first["reason"].startswith("no champion yet") and first["reason"].endswith("ECE 0.0400]")
    assert "golden" not in decide(scores(GOOD), params)["reason"]
    json.dumps(d)
