"""The promotion policy (params.yaml `promotion`) as a pure function: decide(scores, params)."""
from __future__ import annotations

import json
import math

import pytest

from pipeline import config
from pipeline.registry import decide

GOOD = {"auc": 0.95, "accuracy": 0.9, "sensitivity": 0.96, "specificity": 0.8, "precision": 0.9, "f1": 0.93,
        "threshold": 0.4}


def scores(challenger: dict, champion: dict | None = None, ch_v: int = 2, champ_v: int = 1) -> dict:
    return {"n_test": 500, "challenger": {"version": ch_v, "metrics": challenger},
            "champion": None if champion is None else {"version": champ_v, "metrics": champion}}


@pytest.fixture
def params():
    return config.load_params()   # the real policy: auc primary, +0.002, floors auc .90 sens .90 spec .60


def test_first_model_passing_floors_becomes_champion(params):
    d = decide(scores(GOOD), params)
    assert d["promote"] is True
    assert "no champion yet" in d["reason"] and d["champion_version"] is None
    json.dumps(d)  # XCom-ready


def test_first_champion_can_be_left_to_a_person(params):
    params["promotion"]["first_champion"] = "manual"
    d = decide(scores(GOOD), params)
    assert d["promote"] is False and "by hand" in d["reason"] and "--version 2" in d["reason"]


@pytest.mark.parametrize("metric,value", [("sensitivity", 0.899), ("specificity", 0.5), ("auc", 0.8)])
def test_floor_blocks_promotion_even_without_champion(params, metric, value):
    d = decide(scores({**GOOD, metric: value}), params)
    assert d["promote"] is False
    assert metric in d["reason"] and "floor" in d["reason"]
    assert d["floors_failed"] and d["floors_failed"][0].startswith(metric)


def test_floor_blocks_a_better_challenger(params):
    d = decide(scores({**GOOD, "auc": 0.99, "sensitivity": 0.85}, {**GOOD, "auc": 0.91}), params)
    assert d["promote"] is False and "sensitivity 0.8500 < floor 0.9000" in d["reason"]


def test_min_improvement_boundary(params):
    champ = {**GOOD, "auc": 0.930}
    assert decide(scores({**GOOD, "auc": 0.932}, champ), params)["promote"] is True     # exactly +0.002
    d = decide(scores({**GOOD, "auc": 0.9315}, champ), params)
    assert d["promote"] is False and "min_improvement" in d["reason"]
    assert d["champion_score"] == 0.930 and d["challenger_score"] == 0.9315


def test_worse_challenger_rejected_with_both_scores_in_reason(params):
    d = decide(scores({**GOOD, "auc": 0.91}, {**GOOD, "auc": 0.95}), params)
    assert d["promote"] is False
    assert "0.9100" in d["reason"] and "0.9500" in d["reason"] and "v1" in d["reason"] and "v2" in d["reason"]


def test_champion_under_floor_on_todays_data_is_replaced(params):
    # data changed: the champion now misses the specificity floor; a challenger that passes all
    # floors replaces it even though its AUC is not higher
    d = decide(scores({**GOOD, "auc": 0.94}, {**GOOD, "auc": 0.95, "specificity": 0.55}), params)
    assert d["promote"] is True and "under the floors" in d["reason"]


def test_primary_metric_is_configurable(params):
    params["promotion"]["primary_metric"] = "f1"
    d = decide(scores({**GOOD, "auc": 0.90, "f1": 0.95}, {**GOOD, "auc": 0.99, "f1": 0.90}), params)
    assert d["promote"] is True and d["primary_metric"] == "f1"


def test_undefined_metric_counts_as_failing_floor(params):
    d = decide(scores({**GOOD, "auc": math.nan}), params)
    assert d["promote"] is False and "auc unavailable" in d["reason"]
    json.dumps(d)


def test_same_version_is_not_promoted_again(params):
    d = decide(scores(GOOD, GOOD, ch_v=3, champ_v=3), params)
    assert d["promote"] is False and "already the champion" in d["reason"]
