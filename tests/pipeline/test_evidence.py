"""The reviewer's figures (pipeline.evaluation.evidence) of a real tiny model on real held-out films:
the galleries hold exactly the errors at the threshold, worst first; the curves are scikit-learn's;
a set without errors gives a sheet that says so; the PNGs are real images of a readable size."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import auc, roc_curve

from pipeline.data import training_data
from pipeline.evaluation import evidence, quality
from pipeline.inference.predict import Predictor
from pipeline.mlops import model_card


@pytest.fixture(scope="module")
def scored(tiny_checkpoint, small_dataset, tiny_params):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    splits, _, cache = training_data.load(small_dataset, tiny_params)
    return predictor, splits, cache, quality.score(predictor, splits, tiny_params, cache)


def expected_errors(y, p, t) -> dict:
    """The errors at t, counted and ordered without the module's code."""
    fn = sorted((i for i in range(len(y)) if y[i] == 1 and p[i] < t), key=lambda i: (p[i], i))
    fp = sorted((i for i in range(len(y)) if y[i] == 0 and p[i] >= t), key=lambda i: (-p[i], i))
    return {"false_negatives": fn, "false_positives": fp}


def test_galleries_hold_exactly_the_errors_worst_first(scored, tiny_params, tmp_path):
    predictor, splits, cache, result = scored
    index = evidence.write(tmp_path, predictor, 7, splits, tiny_params, cache, result)
    y, p = result["probs"]["test"]["y"], result["probs"]["test"]["p"]
    want = expected_errors(list(y), list(p), predictor.threshold)
    (tn, fp), (fn, tp) = result["test"]["confusion_matrix"]
    assert len(want["false_negatives"]) == fn and len(want["false_positives"]) == fp
    held = {g["kind"]: g for g in index["galleries"] if g["set"] == "held-out"}
    assert set(held) == {"false_negatives", "false_positives"}
    for kind, g in held.items():
        assert g["errors"] == len(want[kind]) and g["n"] == len(y)
        shown = want[kind][:evidence.MAX_TILES]
        assert g["shown"] == len(shown) == len(g["ids"])
        assert g["ids"] == [evidence.case_id(splits.test[i]) for i in shown]
        with Image.open(tmp_path / g["file"]) as img:
            assert img.format == "PNG" and img.width >= 600
    assert json.loads((tmp_path / "index.json").read_text()) == index
    assert fn + fp > 0, "the tiny model makes errors: the test must see some"


def test_case_ids_never_show_a_file_name_that_could_name_someone(scored):
    _, splits, _, _ = scored
    sample = splits.test[0]
    assert evidence.case_id(sample) == sample.path.stem          # Kermany's person..._virus_...
    renamed = type(sample)(**{**sample.__dict__, "path": sample.path.with_name("DOE_JOHN_chest.jpeg")})
    assert evidence.case_id(renamed) == f"sha256:{sample.digest[:12]}"


def test_curves_are_sklearn_roc_on_the_same_scores(scored, tiny_params, tmp_path):
    predictor, splits, cache, result = scored
    other = {k: dict(v) for k, v in result["probs"].items() if k != "stress"}
    rng = np.random.default_rng(0)   # a "champion" that ranks differently on the same cases
    other["test"]["p"] = np.clip(other["test"]["p"] + rng.normal(0, 0.3, len(other["test"]["p"])), 0, 1)
    champion = (3, predictor, {"probs": other})
    index = evidence.write(tmp_path, predictor, 7, splits, tiny_params, cache, result, champion)
    points = json.loads((tmp_path / "curves.json").read_text())["held-out"]
    for label, p in (("challenger v7", result["probs"]["test"]["p"]), ("champion v3", other["test"]["p"])):
        fpr, tpr, _ = roc_curve(result["probs"]["test"]["y"], p)
        assert points[label]["fpr"] == pytest.approx(fpr.tolist())
        assert points[label]["tpr"] == pytest.approx(tpr.tolist())
        entry = next(c for c in index["curves"] if c["set"] == "held-out")
        assert entry["auc"][label] == pytest.approx(auc(fpr, tpr), abs=1e-4)
    assert entry["auc"]["challenger v7"] == pytest.approx(result["test"]["auc"], abs=1e-4)
    assert entry["auc"]["challenger v7"] != entry["auc"]["champion v3"]


def test_a_set_without_errors_gives_a_sheet_that_says_so(scored, tiny_params, tmp_path, monkeypatch):
    predictor, splits, cache, result = scored
    monkeypatch.setattr(evidence, "MAX_TILES", 2)   # and a capped sheet shows the worst, says how many in all
    saved = predictor.threshold
    try:
        predictor.threshold = 0.0          # everything PNEUMONIA: no false negative at all
        index = evidence.write(tmp_path, predictor, 7, splits, tiny_params, cache, result)
    finally:
        predictor.threshold = saved
    held = {g["kind"]: g for g in index["galleries"] if g["set"] == "held-out"}
    assert held["false_negatives"]["errors"] == held["false_negatives"]["shown"] == 0
    y, p = result["probs"]["test"]["y"], result["probs"]["test"]["p"]
    assert held["false_positives"]["errors"] == int((y == 0).sum()) > 2 == held["false_positives"]["shown"]
    worst = expected_errors(list(y), list(p), 0.0)["false_positives"][:2]
    assert held["false_positives"]["ids"] == [evidence.case_id(splits.test[i]) for i in worst]
    with Image.open(tmp_path / held["false_negatives"]["file"]) as img:
        assert img.format == "PNG" and img.height < img.width   # the one-line statement, not a grid


def test_stress_sheet_shows_the_same_films_under_every_shift(scored, tiny_params, tmp_path):
    predictor, splits, cache, result = scored
    index = evidence.write(tmp_path, predictor, 7, splits, tiny_params, cache, result)
    stress = index["stress"]
    assert stress["shifts"] == len(result["probs"]["stress"]["p"]) and stress["films"] == 2 * evidence.SHIFT_FILMS
    with Image.open(tmp_path / stress["file"]) as img:
        assert img.height > img.width      # one row per shift family


def test_the_cards_evidence_section_is_replaced_and_stays_before_the_decision():
    index = {"version": 5, "champion": 4, "galleries": [
        {"set": "held-out", "kind": "false_negatives", "file": "g_fn.png", "errors": 3, "n": 50},
        {"set": "held-out", "kind": "false_positives", "file": "g_fp.png", "errors": 0, "n": 50}],
        "curves": [{"set": "held-out", "file": "c.png", "auc": {"challenger v5": 0.91, "champion v4": 0.9}}],
        "stress": {"file": "s.png", "films": 4, "shifts": 28}}
    first = model_card.with_evidence("## card\n\ntext", model_card.evidence_section(index, "http://ui/#/x"))
    decided = f"{first}\n\n**Promotion decision.** rejected: worse"
    again = model_card.with_evidence(decided, model_card.evidence_section({**index, "champion": 3}, "http://ui/#/y"))
    assert again.count(model_card.EVIDENCE_HEADING) == 1 and "http://ui/#/x" not in again
    assert again.index(model_card.EVIDENCE_HEADING) < again.index("**Promotion decision.**")
    assert again.startswith("## card\n\ntext") and again.endswith("rejected: worse")
    assert "[3 false negatives](http://ui/#/y/g_fn.png)" in again and "[0 false positives]" in again
