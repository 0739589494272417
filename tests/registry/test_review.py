"""Shadow evidence and sign-off as pure functions (pipeline.mlops.review): what the DAG's `shadow`,
`approval` and `verdict` tasks decide on, and what the reviewer reads. The DAG itself, with a real
reviewer answering through Airflow's API: tests/dags/test_approval_dag.py."""
from __future__ import annotations

import datetime as dt

import pytest

from pipeline.mlops import review
from pipeline.mlops.policy import decide
from pipeline.settings import config

from test_policy import GOOD, interval, scores

ACTOR = "airflow:xray_retrain/manual__2026-12-06"


def settings(*overrides: str):
    return config.load_params(None, list(overrides))


@pytest.fixture
def promoting():
    """A policy decision that promotes v2 over v1, and its scores (local cases included)."""
    local = {**GOOD, "local_auc": 0.91, "local_sensitivity": 0.93, "local_specificity": 0.7, "local_ece": 0.05,
             "local_n": 60}
    s = scores(local, {**GOOD, "local_auc": 0.9, "local_sensitivity": 0.9, "local_specificity": 0.72},
               test=interval(0.004), stress=interval(0.006))
    s["comparison"]["local"] = interval(0.01, 0.05)
    decision = decide(s, settings())
    assert decision["promote"] is True
    return decision, s


def response(option: str, user: str | None = "alice", comment: str = "looks right"):
    return {"chosen_options": [option], "params_input": {"comment": comment},
            "responded_at": dt.datetime(2026, 12, 6, 23, 5, 7, 123, tzinfo=dt.timezone.utc),
            "responded_by_user": {"id": user, "name": user} if user else None}


def test_shadow_requirement_and_shortfall():
    shadow = settings("promotion.shadow.min_cases=100", "promotion.shadow.min_days=2").promotion.shadow
    assert review.shadow_required(shadow)
    assert not review.shadow_required(settings().promotion.shadow)          # both 0 by default
    assert review.shadow_shortfall({"answered": 40, "days": 3.0}, shadow) == ["40 of 100 live cases answered"]
    assert review.shadow_shortfall({"answered": 100, "days": 1.5}, shadow) == ["1.50 of 2 days in shadow"]
    assert review.shadow_shortfall({"answered": 100, "days": 2.0}, shadow) == []


def test_approve_records_who_when_and_why(promoting):
    decision, _ = promoting
    params = settings("promotion.approval=required")
    final = review.final_decision(decision, params, actor=ACTOR, shadow_out={"required": False},
                                  response=response("Approve"))
    assert final["promote"] is True and final["actor"] == ACTOR
    assert final["approval"] == {"by": "alice", "at": "2026-12-06T23:05:07+00:00", "comment": "looks right",
                                 "via": "airflow-hitl"}
    assert final["reason"].startswith("approved by alice: looks right (the policy: challenger v2 vs champion v1")
    assert final["policy_reason"] == decision["reason"]


def test_reject_keeps_the_comment_in_the_reason(promoting):
    decision, _ = promoting
    final = review.final_decision(decision, settings("promotion.approval=required"), actor=ACTOR,
                                  shadow_out={"required": False}, response=response("Reject", "bob", "wrong lung"))
    assert final["promote"] is False and final["approval"]["by"] == "bob"
    assert final["reason"].startswith("rejected by bob in review: wrong lung (the policy:")


def test_no_answer_is_a_rejection_without_approver(promoting):
    decision, _ = promoting
    timed_out = response("Reject", user=None, comment="")     # what Airflow's timeout sweep writes
    final = review.final_decision(decision, settings("promotion.approval=required",
                                                     "promotion.approval_timeout_hours=24"),
                                  actor=ACTOR, shadow_out={"required": False}, response=timed_out)
    assert final["promote"] is False and "approval" not in final
    assert final["reason"].startswith("no reviewer answered within 24 h")


def test_shadow_timeout_rejects_before_any_sign_off(promoting):
    decision, _ = promoting
    params = settings("promotion.approval=required", "promotion.shadow.min_cases=50", "promotion.shadow.max_days=7")
    final = review.final_decision(decision, params, actor=ACTOR, shadow_out=None,
                                  shadow_now={"answered": 12, "days": 7.1})
    assert final["promote"] is False
    assert "not enough shadow evidence after 7 days" in final["reason"] and "12 of 50 live cases" in final["reason"]


def test_auto_and_policy_rejections_pass_through(promoting):
    decision, s = promoting
    final = review.final_decision(decision, settings(), actor=ACTOR, shadow_out={"required": False})
    assert final["promote"] is True and final["reason"] == decision["reason"] and "approval" not in final
    rejected = decide(scores({**GOOD, "auc": 0.5}), settings())
    final = review.final_decision(rejected, settings("promotion.approval=required"), actor=ACTOR, shadow_out=None)
    assert final["promote"] is False and final["reason"] == rejected["reason"]


def test_review_body_shows_every_kind_of_evidence(promoting):
    decision, s = promoting
    evidence = {"version": 2, "answered": 412, "dropped": 3, "failed": 1, "since": "2026-12-01T08:00:00+00:00",
                "days": 5.6, "agreement": 0.947, "confirmed": 38,
                "challenger": {"sensitivity": {"value": 0.93, "low": 0.8, "high": 0.98}, "specificity": None,
                               "ece": {"value": 0.04, "low": 0.02, "high": 0.07}},
                "champion": None, "page": "/staff/shadow/"}
    body = review.review_body("chest-xray", 2, decision, s, evidence, "## Chest X-ray pneumonia classifier, version 2",
                              settings("promotion.approval=required"), model_link="http://mlflow:5000/#/models/x/versions/2",
                              site_url="https://site.example/")
    for shown in ("**in distribution** (500 held-out images)", "**under stress** (200 shifted images)",
                  "**on the site's confirmed cases** (60 images)", "| AUC | 0.9100 | 0.9000 | +0.0100 [-0.0400, +0.0600] |",
                  "mean AUC over shifts", "**412** answered", "Agreement with the champion: **0.9470**",
                  "| sensitivity | 0.9300 [0.8000, 0.9800] | n/a |", "https://site.example/staff/shadow/",
                  "http://mlflow:5000/#/models/x/versions/2", decision["reason"], "within 72 h",
                  "## Chest X-ray pneumonia classifier, version 2"):
        assert shown in body, shown
    assert "https://site.example/staff/shadow/" in "\n".join(
        review.shadow_lines({"required": False}, settings().promotion.shadow, "https://site.example"))
