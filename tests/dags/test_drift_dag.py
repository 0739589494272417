"""The daily drift DAG with a real `dag.test()`: the site's records (a real Django database) of a
day whose inputs moved away from the champion's training X-rays -> a drift report in MLflow and
a notification on a chat webhook (apprise, connection xray_apprise)."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
import torch
from dagtest_utils import REPO, airflow_env, base_env, migrate, mlflow_client

SEED_SITE = r"""
import json, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "xray_site.settings"
import django; django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth import get_user_model
from diagnosis.models import Diagnosis, Refusal
owner = get_user_model().objects.create_user("dr_stream", password="x")
for row in json.loads(sys.argv[2]):
    if row["refused"]:
        Refusal.objects.create(owner=owner, reason=row["reason"], gate_score=row["gate_score"],
                               model_name="m", model_version="1")
    else:
        Diagnosis.objects.create(owner=owner, file_format="JPEG", size_bytes=1, sha256="0" * 64, width=1,
                                 height=1, image="x.jpg", label=row["label"], probability=0.5, threshold=0.5,
                                 model_name="m", model_version="1", gate_score=row["gate_score"])
print(Diagnosis.objects.count(), Refusal.objects.count())
"""


def _shifted_stream(reference: dict, n: int = 60, seed: int = 0) -> list[dict]:
    """A seeded day of requests from a 'new device': feature distances beyond the training p90,
    and one in four refused by the gate."""
    rng = __import__("numpy").random.default_rng(seed)
    q = reference["distance_quantiles"]
    rows = []
    for i in range(n):
        score = float(q[9] + rng.uniform(0.2, 1.5) * (q[10] - q[5] + 1))
        if i % 4 == 0:
            rows.append({"refused": True, "reason": "this does not look like a frontal chest radiograph: far",
                         "gate_score": score * 2})
        else:
            rows.append({"refused": False, "label": "PNEUMONIA" if rng.uniform() < 0.5 else "NORMAL",
                         "gate_score": score})
    return rows


def test_drift_dag_reports_and_notifies(tiny_checkpoint, mlflow_server, webhook, tmp_path, monkeypatch):
    from pipeline.settings import config
    from pipeline.mlops import aliases, tracking

    name = f"drifttest-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    params = config.apply_overrides(config.load_params(), {"registry.model_name": name})
    version = tracking.register_checkpoint(tiny_checkpoint, params, tags={"trigger": "drift-test"})["version"]
    aliases.promote(int(version), name=name, force=True)

    reference = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["gate"]["reference"]
    site_db = f"sqlite:///{tmp_path / 'site.db'}"
    site_env = base_env(DATABASE_URL=site_db, XRAY_WEB_DATA_DIR=str(tmp_path / "site"), DJANGO_ENV="development")
    seeded = subprocess.run([sys.executable, "-c", SEED_SITE, str(REPO), json.dumps(_shifted_stream(reference))],
                            env=site_env, capture_output=True, text=True, timeout=300)
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    assert seeded.stdout.split() == ["45", "15"]

    env = airflow_env(tmp_path / "airflow", XRAY_MODEL_NAME=name, MLFLOW_TRACKING_URI=mlflow_server,
                      AIRFLOW_CONN_XRAY_APPRISE=webhook.connection, DATABASE_URL=site_db,
                      XRAY_WEB_DATA_DIR=str(tmp_path / "site"), DJANGO_ENV="development")
    migrate(env)
    summary = _run_drift(env)
    assert summary["state"] == "success", summary["log"][-3000:]
    out = summary["xcom"]["drift_report"]
    assert out["n"] == 60 and out["n_refused"] == 15 and out["champion_version"] == str(version)
    assert out["drifted"] and out["psi"] > 0.25 and out["share_above_p90"] == 1.0
    assert any("refused" in a for a in out["alerts"]) and any("PSI" in a for a in out["alerts"])

    run = mlflow_client(mlflow_server).get_run(out["run_id"])
    assert run.data.metrics["drift_alert"] == 1.0 and run.data.metrics["drift_n"] == 60
    assert run.data.tags["champion_version"] == str(version)
    [message] = webhook.received                      # through apprise (connection xray_apprise)
    assert "input drift" in message["title"] and "PSI" in message["message"]


def _run_drift(env: dict) -> dict:
    from dagtest_utils import RUN_DAG, sh

    proc = sh([sys.executable, str(RUN_DAG), "--dag-id", "xray_drift"], cwd=REPO, env=env, check=False, timeout=420)
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return {**json.loads(lines[-1]), "log": proc.stdout + proc.stderr}


SEED_CASES = r"""
import json, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "xray_site.settings"
import django; django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from diagnosis import local_cases
from diagnosis.models import Confirmation, Diagnosis
owner = local_cases.import_account()
for i, row in enumerate(json.loads(sys.argv[2])):
    d = Diagnosis.objects.create(owner=owner, source="import", file_format="PNG", size_bytes=1, sha256=f"{i:064d}",
                                 width=1, height=1, image="", label=row["answered"], probability=row["p"],
                                 threshold=row["t"], model_name=row["name"], model_version=row["version"],
                                 logit=row["logit"], patient_key=local_cases.patient_key(f"p{i}"))
    Confirmation.objects.create(diagnosis=d, by=owner, label=row["truth"])
print(Confirmation.objects.count())
"""


def test_site_adapt_task_serves_the_sites_operating_point(tiny_checkpoint, mlflow_server, webhook, tmp_path,
                                                          monkeypatch):
    """The daily task fits the site's operating point on the confirmed cases in the site's database,
    registers it (same weights) and promotes it; the drift report counts the cases behind it."""
    import numpy as np

    from pipeline.mlops import aliases, tracking
    from pipeline.model.calibration import Calibration
    from pipeline.settings import config

    name = f"sitetest-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    params = config.apply_overrides(config.load_params(), {"registry.model_name": name})
    version = str(tracking.register_checkpoint(tiny_checkpoint, params, tags={"trigger": "site-test"})["version"])
    aliases.promote(int(version), name=name, force=True)
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    cal, t = Calibration.from_dict(ckpt["calibration"]), float(ckpt["threshold"])
    cut = (np.log(t / (1 - t)) - cal.b) / cal.a
    rng = np.random.default_rng(3)
    y = rng.random(120) < 0.6
    logits = cut + np.where(y, 4.0, 0.8) + rng.normal(0, 1, 120) / abs(cal.a)
    rows = [{"name": name, "version": version, "logit": float(z), "p": float(cal.probability([z])[0]), "t": t,
             "answered": "PNEUMONIA" if cal.probability([z])[0] >= t else "NORMAL",
             "truth": "PNEUMONIA" if pos else "NORMAL"} for z, pos in zip(logits, y)]
    site_db = f"sqlite:///{tmp_path / 'site.db'}"
    site_env = base_env(DATABASE_URL=site_db, XRAY_WEB_DATA_DIR=str(tmp_path / "site"), DJANGO_ENV="development")
    seeded = subprocess.run([sys.executable, "-c", SEED_CASES, str(REPO), json.dumps(rows)],
                            env=site_env, capture_output=True, text=True, timeout=300)
    assert seeded.returncode == 0 and seeded.stdout.split() == ["120"], seeded.stderr[-3000:]

    env = airflow_env(tmp_path / "airflow", XRAY_MODEL_NAME=name, MLFLOW_TRACKING_URI=mlflow_server,
                      AIRFLOW_CONN_XRAY_APPRISE=webhook.connection, DATABASE_URL=site_db,
                      XRAY_WEB_DATA_DIR=str(tmp_path / "site"), DJANGO_ENV="development")
    migrate(env)
    summary = _run_drift(env)
    assert summary["state"] == "success", summary["log"][-3000:]
    adapted = summary["xcom"]["site_adapt"]
    assert adapted["promoted"] and adapted["version"], adapted
    client = mlflow_client(mlflow_server)
    assert client.get_model_version_by_alias(name, "champion").version == str(adapted["version"])
    mv = client.get_model_version(name, str(adapted["version"]))
    assert mv.tags["site.parent_version"] == version and mv.tags["trigger"] == "site-adapt"
    assert summary["xcom"]["drift_report"]["confirmed"] == 120
    # realised performance: what the site answered (the served threshold calls most NORMAL films
    # PNEUMONIA) against the confirmations, logged to MLflow, and a notification under the floors
    real = summary["xcom"]["realised_performance"]
    answered = np.array([r["answered"] == "PNEUMONIA" for r in rows])
    specificity = float(np.mean(~answered[~y]))                  # by hand
    history = client.get_metric_history(real["run_id"], f"v{version}.specificity")
    assert len(history) == 1 and history[0].value == pytest.approx(specificity)
    assert client.get_metric_history(real["run_id"], f"v{version}.n")[0].value == 120
    assert specificity < 0.6 and any(b.startswith("specificity") for b in real["below_floors"])
    assert webhook.titled("site operating point served") and webhook.titled("under the floors on confirmed cases")
