"""Tracking: a training run as a reviewer sees it in MLflow, and the bad situations around it."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.settings import config
from pipeline.mlops import audit, server, tracking, versions


def _artifacts(client, run_id, path=None):
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            yield from _artifacts(client, run_id, item.path)
        else:
            yield item.path


def test_run_is_logged_with_everything(mlflow_server, trained, reg_params, small_dataset):
    client = MlflowClient(mlflow_server)
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    assert trained["run_name"] == run.info.run_name
    # named so a person can tell runs apart: date, data version, trigger
    assert time.strftime("%Y-%m-%d") in run.info.run_name and "data-01234567" in run.info.run_name
    assert run.info.run_name.endswith("_test")
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == reg_params.registry.experiment

    # every parameter in effect
    flat = reg_params.flat()
    assert set(flat) <= set(run.data.params)
    assert run.data.params["preprocess.image_size"] == "64" and run.data.params["train.epochs"] == "1"
    assert run.data.params["promotion.non_inferiority_margin"] == "0.01"

    # per-epoch curves and the final held-out metrics
    for key in ("train_loss", "val_loss", "val_auc", "lr", "images_per_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1], key
    for key in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "threshold"):
        assert run.data.metrics[f"test_{key}"] == pytest.approx(trained["metrics"][key]), key
    (tn, fp), (fn, tp) = trained["metrics"]["confusion_matrix"]
    assert (run.data.metrics["test_tn"], run.data.metrics["test_tp"]) == (tn, tp)
    assert run.data.metrics["test_n"] == tn + fp + fn + tp

    # data version: tags and a dataset input
    tags = run.data.tags
    assert tags["data.dvc_hash"] == "0123456789abcdef0123"
    assert tags["git_commit"] not in ("", "unknown")
    assert tags["data.rejected"] == "0"
    split = json.loads(Path(trained["out_dir"], "split.json").read_text())
    for part in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            assert tags[f"data.count.{part}.{cls}"] == str(split["counts"][part][cls])
    assert sum(int(tags[f"data.count.{p}"]) for p in ("train", "val", "test")) == \
        sum(1 for _ in small_dataset.rglob("*.jpeg"))
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0]
    assert ds.dataset.digest.startswith("0123456789abcdef")
    assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "training"
    assert json.loads(ds.dataset.profile)["num_rows"] == int(tags["data.count.train"]) + \
        int(tags["data.count.val"]) + int(tags["data.count.test"])

    # system
    assert tags["system.torch"].startswith("2.") and tags["system.device"] == "cpu"
    assert int(tags["system.threads"]) >= 1 and float(tags["system.wall_time_s"]) > 0

    # reports and plots
    files = set(_artifacts(client, run.info.run_id))
    assert {"plots/roc.png", "plots/precision_recall.png", "plots/confusion_matrix.png",
            "plots/training_curves.png", "reports/validation_report.json", "reports/metrics.json",
            "reports/history.json", "reports/split.json", "system.json", "params.yaml",
            "plots/reliability.png", "plots/stress.png", "plots/threshold_tradeoff.png",
            "reports/operating_point.json", "stress/per_shift.json"} <= files
    # the stress evaluation: per-shift figures and the worst case, as metrics
    for key in ("stress_mean_auc", "stress_worst_auc", "stress_worst_sensitivity", "test_ece", "val_ece",
                "stress.gamma.strong.auc", "stress.dicom.mild.sensitivity", "stress.png16.strong.specificity"):
        assert key in run.data.metrics, key
    assert run.data.metrics["stress_worst_auc"] <= run.data.metrics["stress_mean_auc"]
    local = Path(client.download_artifacts(run.info.run_id, "plots/roc.png"))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the model: a registered version from this run, alias challenger
    name = config.model_name(reg_params)
    mv = client.get_model_version(name, str(trained["version"]))
    assert mv.run_id == run.info.run_id and mv.status == "READY"
    assert client.get_model_version_by_alias(name, "challenger").version == str(trained["version"])
    moved = [e for e in audit.timeline(client, name) if e["kind"] == "challenger"][-1]   # the move, on record
    assert moved["to_version"] == trained["version"] and run.info.run_id in moved["reason"] and moved["actor"]
    assert mv.tags["data.version"] == "0123456789abcdef0123"
    scores = versions.version_scores(client, name, trained["version"])   # on the logged model, as metrics
    assert scores["test.auc"] == pytest.approx(trained["metrics"]["auc"]) and "test.sensitivity" in scores
    assert client.get_logged_model(mv.source.removeprefix("models:/")).metrics
    # its model card: population, intended use, figures in distribution and under stress, threshold, limits
    for words in ("paediatric", "Intended use", "| AUC |", "worst shift", "**Threshold.**", "**Calibration.**",
                  "Known limits", f"version {trained['version']}"):
        assert words in mv.description, words
    json.dumps(trained)   # XCom: plain JSON


def test_unreachable_server_fails_fast_naming_the_uri(mlflow_server, reg_params, small_dataset, tmp_path,
                                                      monkeypatch):
    from registry_helpers import free_port_uri

    dead = free_port_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    start = time.monotonic()
    with pytest.raises(server.TrackingServerUnavailable, match=dead.replace(".", r"\.")):
        tracking.tracked_train(reg_params, small_dataset, tmp_path / "out")
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out").exists()          # failed before training started
    # and nothing was started on the real server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(reg_params.registry.experiment)
    if exp is not None:
        assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def test_crash_marks_run_failed_and_leaves_nothing_running(mlflow_server, reg_params, tmp_path):
    client = MlflowClient(mlflow_server)
    broken = tmp_path / "dataset"
    (broken / "train" / "NORMAL").mkdir(parents=True)           # no PNEUMONIA, no images at all
    with pytest.raises(Exception, match="no images|dataset"):
        tracking.tracked_train(reg_params, broken, tmp_path / "out", run_name="crash-on-purpose")
    exp = client.get_experiment_by_name(reg_params.registry.experiment)
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'crash-on-purpose'")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def test_server_script_background_status_stop(tmp_path):
    from registry_helpers import free_port

    script = Path(__file__).resolve().parents[2] / "scripts" / "mlflow_server.sh"
    port = free_port()
    env = {**os.environ, "MLFLOW_DIR": str(tmp_path / "home"), "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1"}
    for key in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"):
        env.pop(key, None)
    up = subprocess.run([str(script), "--background"], env=env, capture_output=True, text=True, timeout=150)
    try:
        assert up.returncode == 0, up.stderr
        assert (tmp_path / "home" / "mlflow.db").exists() and (tmp_path / "home" / "artifacts").is_dir()
        st = subprocess.run([str(script), "--status"], env=env, capture_output=True, text=True, timeout=30)
        assert st.returncode == 0 and f":{port}" in st.stdout
        # the default store really is the SQLite file under MLFLOW_DIR, artifacts proxied by the server
        client = MlflowClient(f"http://127.0.0.1:{port}")
        exp = client.create_experiment("script-check")
        assert client.get_experiment(exp).artifact_location.startswith("mlflow-artifacts:")
    finally:
        down = subprocess.run([str(script), "--stop"], env=env, capture_output=True, text=True, timeout=60)
    assert down.returncode == 0
    st = subprocess.run([str(script), "--status"], env=env, capture_output=True, text=True, timeout=30)
    assert st.returncode == 1 and "down" in st.stdout
