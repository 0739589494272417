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


class FakeAirflow:
    """Airflow's REST API as far as `versioning.announce` uses it (token, asset lookup, asset event);
    the DAG's schedule on that asset is checked by tests/dags/test_dag_integrity.py."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from pipeline.settings import config

        events = self.events = []

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/auth/token":
                    return self._reply({"access_token": "t"})
                events.append(body)
                self._reply({"id": 1})

            def do_GET(self):  # noqa: N802
                self._reply({"assets": [{"id": 3, "uri": config.DATA_ASSET_URI}]})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def _git_dvc_repo(root):
    """A repository with DVC and a local DVC remote, as the platform's checkout is."""
    dvc = [sys.executable, "-m", "dvc"]
    repo, remote = root / "repo", root / "dvc-remote"
    repo.mkdir()
    for cmd in (["git", "init", "-q"], dvc + ["init", "-q"], dvc + ["config", "core.analytics", "false"],
                dvc + ["remote", "add", "-d", "local", str(remote)],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "dvc init"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    return repo, remote


def test_export_puts_deidentified_cases_in_a_new_data_version(champion, xray_jpeg, pneumonia_jpeg, tmp_path,
                                                              monkeypatch):
    from django.test import override_settings

    from diagnosis import local_cases
    from diagnosis.models import Confirmation, Diagnosis
    from pipeline.evaluation.site import share_of
    from pipeline.settings import config

    films = tmp_path / "films"
    for i in range(6):   # three patients, two films each, both classes
        for label, data in (("NORMAL", xray_jpeg), ("PNEUMONIA", pneumonia_jpeg)):
            path = films / label / f"person{100 + i // 2}_bacteria_{i}.jpeg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data + bytes([i]) * (i + 1))    # other bytes, the same pixels
    assert json.loads(run("import", "--data", str(films), "--json"))["recorded"] == 12
    repo, remote = _git_dvc_repo(tmp_path)
    airflow = FakeAirflow()
    monkeypatch.setenv("XRAY_REPO", str(repo))
    monkeypatch.setenv("AIRFLOW_URL", airflow.url)
    monkeypatch.setenv("XRAY_GIT_PUSH", "0")
    half = config.apply_overrides(config.load_params(), {"site.train_share": 0.5})
    with override_settings(XRAY_PIPELINE_PARAMS=half):
        out = json.loads(run("export", "--json"))
        data = repo / "data" / "chest_xray"
        files = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())
        assert len(files) == 12 and all(f.split("/")[0] in ("train", "local") for f in files)
        by_patient = {}
        for f in files:
            share, label, name = f.split("/")
            assert name.startswith("site-") and "person" not in name     # no patient id in a name
            by_patient.setdefault(name.split("-")[1], set()).add(share)
        assert len(by_patient) == 3 and all(len(s) == 1 for s in by_patient.values())   # a patient on one side
        shares = {share_of(c.group, 0.5) for c in local_cases.cases(share=None)}
        assert {f.split("/")[0] for f in files} == {"train" if s == "train" else "local" for s in shares}
        # a new data version: the pointer committed, the files in the DVC remote, the Asset announced
        assert out["data_version"] and (repo / "data" / "chest_xray.dvc").is_file()
        log = subprocess.run(["git", "log", "--format=%s"], cwd=repo, capture_output=True, text=True).stdout
        assert "the site's confirmed cases" in log.splitlines()[0]
        distinct = {(data / f).read_bytes() for f in files}    # DVC stores each content once, plus the listing
        assert sum(1 for p in remote.rglob("*") if p.is_file()) == len(distinct) + 1
        assert out["announced"] and airflow.events[-1]["extra"]["data_version"] == out["data_version"]
        # staff overturn one confirmation: the next export moves that film to the other class
        c = Confirmation.objects.filter(diagnosis__source="import").first()
        local_cases.adjudicate(c, _staff(), "NORMAL" if c.label == "PNEUMONIA" else "PNEUMONIA")
        again = json.loads(run("export", "--json", "--no-publish"))
        assert again["removed"] == 1
    airflow.server.shutdown()
    assert Diagnosis.objects.filter(source="import").count() == 12


def _staff():
    from webutil import make_user

    return make_user("site_staff", staff=True)
