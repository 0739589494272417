"""The site learns its hospital: confirmed films imported through the upload path, and the site's
operating point fitted, registered and served (`python -m pipeline site import|adapt`), against a
real MLflow server and the real champion."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from webutil import MODEL_NAME, png_bytes

pytestmark = pytest.mark.usefixtures("db")


def run(*args) -> str:
    from django.core.management import call_command
    from django.test import override_settings

    out = io.StringIO()
    with override_settings(XRAY_MODEL_NAME=MODEL_NAME):
        call_command("site", *args, stdout=out)
    return out.getvalue()


def test_import_records_confirmed_films_and_lists_the_refused(champion, xray_jpeg, pneumonia_jpeg, tmp_path):
    from diagnosis import local_cases
    from diagnosis.models import Diagnosis

    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "PNEUMONIA").mkdir()
    (tmp_path / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(xray_jpeg)
    (tmp_path / "PNEUMONIA" / "person12_bacteria_1.jpeg").write_bytes(pneumonia_jpeg)
    (tmp_path / "NORMAL" / "report.txt").write_text("not a film")
    (tmp_path / "PNEUMONIA" / "photo.png").write_bytes(png_bytes(Image.new("RGB", (640, 480), (200, 40, 40))))

    report = json.loads(run("import", "--data", str(tmp_path), "--json"))
    assert report["recorded"] == 2, report
    refused = {r["file"]: r["reason"] for r in report["refused"]}
    assert set(refused) == {"NORMAL/report.txt", "PNEUMONIA/photo.png"} and all(refused.values())
    cases = {c.label: c for c in local_cases.cases()}
    assert set(cases) == {0, 1}          # the folder is the truth, whatever the model answered
    for case in cases.values():
        d = Diagnosis.objects.get(pk=case.id)
        assert d.source == "import" and d.logit is not None and case.logit == d.logit
        assert d.patient_key and d.patient_key != "person12" and len(d.patient_key) == 32
        assert d.confirmation.by.username == local_cases.IMPORT_ACCOUNT
    # the same films again: nothing recorded twice
    again = json.loads(run("import", "--data", str(tmp_path), "--json"))
    assert again["recorded"] == 0 and again["already_imported"] == 2
    assert len(local_cases.cases()) == 2


def _site_cases(champion_version: str, n: int = 160, seed: int = 0):
    """Confirmed cases of a site where the served threshold calls most healthy children PNEUMONIA:
    logits placed relative to the champion's own operating point."""
    from diagnosis import local_cases
    from diagnosis.models import Confirmation, Diagnosis

    from pipeline.mlops.loading import load_champion

    predictor, _ = load_champion(MODEL_NAME)
    cal, t = predictor.calibration, predictor.threshold
    cut = (np.log(t / (1 - t)) - cal.b) / cal.a          # the logit at the served threshold
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.62).astype(int)
    logits = cut + np.where(y == 1, 4.0, 0.8) + rng.normal(0, 1.0, n) / abs(cal.a)
    owner = local_cases.import_account()
    for i, (label, z) in enumerate(zip(y, logits)):
        p = float(cal.probability([z])[0])
        d = Diagnosis.objects.create(
            owner=owner, source="import", file_format="PNG", size_bytes=1, sha256=f"{i:064d}", width=1, height=1,
            image="", label="PNEUMONIA" if p >= t else "NORMAL", probability=p, threshold=t,
            model_name=MODEL_NAME, model_version=champion_version, logit=float(z),
            patient_key=local_cases.patient_key(f"patient-{i // 2}"))
        Confirmation.objects.create(diagnosis=d, by=owner, label="PNEUMONIA" if label else "NORMAL")
    return y, logits


def test_adapt_refuses_with_too_few_cases(champion, registry):
    from mlflow import MlflowClient

    _site_cases(registry["v1"], n=30)
    before = len(MlflowClient(registry["uri"]).search_model_versions(f"name='{MODEL_NAME}'"))
    out = run("adapt")
    assert "30 confirmed cases, at least 50 are needed" in out
    assert len(MlflowClient(registry["uri"]).search_model_versions(f"name='{MODEL_NAME}'")) == before


@pytest.fixture
def restored(champion, registry):
    """Adapting moves the champion: put v1 back, in the registry and in the session's holder."""
    from webutil import ensure_champion

    yield champion
    ensure_champion(registry["uri"], registry["name"], registry["v1"])
    champion.refresh(timeout=120)


def test_adapt_serves_the_sites_operating_point_everywhere(restored, registry, xray_jpeg):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from diagnosis import analysis
    from diagnosis.models import Diagnosis
    from pipeline.mlops.loading import load_champion

    y, logits = _site_cases(registry["v1"])
    dry = json.loads(run("adapt", "--dry-run", "--json"))
    assert dry["fit"]["accepted"] and dry["version"] is None
    out = json.loads(run("adapt", "--json"))
    fit, version = out["fit"], out["version"]
    assert out["promoted"] and version, out
    assert fit["after"]["specificity"] > fit["before"]["specificity"]
    client = MlflowClient(registry["uri"])
    mv = client.get_model_version(MODEL_NAME, str(version))
    assert mv.tags["site.parent_version"] == registry["v1"] and mv.tags["site.weights_version"] == registry["v1"]
    assert mv.tags["site.cases"] == fit["cases_digest"] and mv.tags["site.n"] == str(len(y))
    assert "Site operating point" in mv.description and "out of fold" in mv.description
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == str(version)

    # the registry: the champion's checkpoint carries the site's calibration and threshold
    predictor, _ = load_champion(MODEL_NAME)
    assert predictor.threshold == pytest.approx(fit["threshold"])
    assert predictor.calibration.a == pytest.approx(fit["calibration"]["a"])
    # the pyfunc, by alias
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    row = model.predict(pd.DataFrame({"image": [xray_jpeg]})).iloc[0]
    assert row["threshold"] == pytest.approx(fit["threshold"])
    # the site: the holder notices the new champion and answers with it
    restored.refresh(timeout=120)
    served = restored.get()
    assert served.version == str(version)
    d = analysis.diagnose(Diagnosis.objects.first().owner, "x.jpeg", xray_jpeg, served, heatmap=False)
    assert d.threshold == pytest.approx(fit["threshold"]) and d.model_version == str(version)

    # the same cases again: nothing to do, no new version
    again = json.loads(run("adapt", "--json"))
    assert again["version"] is None and "already" in again["reason"]


def test_cli_runs_the_site_command():
    out = subprocess.run([sys.executable, "-m", "pipeline", "site", "adapt", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--dry-run" in out.stdout
