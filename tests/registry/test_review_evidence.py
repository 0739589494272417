"""The reviewer's figures of a challenger, through the DAG's evaluate step on a real MLflow server: a
registered challenger and champion, a data version with the site's confirmed cases (local/), and
evaluate_candidates; the figures are artifacts under evidence/ of the challenger's run, their counts
are the errors of the predictions at each operating point, and the model card links to them."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image
from test_local_evidence import film_logits, site_data

from pipeline.evaluation import site
from pipeline.mlops import aliases, candidates, model_card


@pytest.fixture
def films(shared_datasets):
    return sorted((shared_datasets / "fullres_samples").glob("*/*.jpeg"))[:80]


def test_evidence_is_logged_on_the_challengers_run_and_linked_from_its_card(
        mlflow_server, model_name, register, trained, loose_params, small_dataset, films, tmp_path):
    champion = register("constant")            # P = 0.5 for every film: AUC 0.5, everything PNEUMONIA
    aliases.promote(champion, force=True)
    challenger = register("good")
    root = site_data(small_dataset, tmp_path, films, film_logits(trained["checkpoint"], films)[1], agree=True)
    scores = candidates.evaluate_candidates(challenger, loose_params, root)
    summary = scores["evidence"]
    assert "error" not in summary, summary

    client = MlflowClient(mlflow_server)
    mv = client.get_model_version(model_name, str(challenger))
    listed = {Path(a.path).name for a in client.list_artifacts(mv.run_id, "evidence")}
    assert set(summary["files"]) <= listed and "index.json" in listed
    local_dir = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="evidence",
                                                         dst_path=str(tmp_path / "got")))
    index = json.loads((local_dir / "index.json").read_text())
    assert index["version"] == challenger and index["champion"] == champion

    # the galleries' counts are the errors of the predictions evaluate made, at each operating point
    ch = scores["challenger"]["metrics"]
    (tn, fp), (fn, tp) = ch["confusion_matrix"]
    galleries = {(g["set"].split()[0], g["kind"]): g for g in index["galleries"]}
    assert galleries["held-out", "false_negatives"]["errors"] == fn
    assert galleries["held-out", "false_positives"]["errors"] == fp
    local = scores["local_cases"]
    prob, thr = site.cross_fitted(local["logits"], local["y"], local["groups"], loose_params.site)
    y, called = np.asarray(local["y"]), prob >= thr
    assert galleries["local", "false_negatives"]["errors"] == int(((y == 1) & ~called).sum())
    assert galleries["local", "false_positives"]["errors"] == int(((y == 0) & called).sum())
    assert galleries["local", "false_negatives"]["n"] == ch["local_n"] == 80
    for g in index["galleries"]:
        assert g["shown"] == min(g["errors"], 16) == len(g["ids"])
        assert all(i.startswith("site-") for i in g["ids"]) if g["set"].startswith("local") else True
        with Image.open(local_dir / g["file"]) as img:
            assert img.format == "PNG"

    # the curves' areas are the AUCs the policy compared, for both models on the same cases
    curves = {c["set"].split()[0]: c for c in index["curves"]}
    cp = scores["champion"]["metrics"]
    assert curves["held-out"]["auc"][f"challenger v{challenger}"] == pytest.approx(ch["auc"], abs=1e-4)
    assert curves["held-out"]["auc"][f"champion v{champion}"] == pytest.approx(cp["auc"], abs=1e-4) == 0.5
    assert curves["local"]["auc"][f"challenger v{challenger}"] == pytest.approx(ch["local_auc"], abs=1e-4)
    assert index["stress"]["shifts"] == ch["stress_shifts"]

    # the model card (the registry's version page) links to every figure
    card = mv.description
    assert card.count(model_card.EVIDENCE_HEADING) == 1
    assert f"/runs/{mv.run_id}/artifacts/evidence" in card
    assert all(name in card for name in summary["files"] if name.endswith(".png"))
