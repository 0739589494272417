"""The registered pyfunc: raw X-ray bytes in, the same answers as pipeline.inference.predict.Predictor out,
in-process (mlflow.pyfunc.load_model by alias) and over HTTP (`mlflow models serve`)."""
from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
import requests

from pipeline.settings import config
from pipeline.mlops import aliases, loading
from pipeline.inference.predict import Predictor
from pipeline.inference.answer import answer_file


def test_pyfunc_by_alias_predicts_like_predictor(mlflow_server, trained, reg_params, xray_bytes, tmp_path):
    name = config.model_name(reg_params)
    model = mlflow.pyfunc.load_model(f"models:/{name}@challenger")
    reference = Predictor.from_checkpoint(trained["checkpoint"], device="cpu")
    expected = [answer_file(b, reference).prediction for b in xray_bytes]

    out = model.predict(pd.DataFrame({"image": xray_bytes}))
    assert list(out.columns) == ["probability", "label", "threshold", "error", "warning", "gate_score"]
    assert list(out["label"]) == [e.label for e in expected]
    assert [float(p) for p in out["probability"]] == pytest.approx([e.probability for e in expected], abs=1e-6)
    assert list(out["threshold"]) == pytest.approx([reference.threshold] * len(xray_bytes))
    assert set(out["error"]) == {""}

    # base64 text (what JSON carries) gives the same; a bad upload fails only its own row
    as_text = pd.DataFrame({"image": [base64.b64encode(xray_bytes[0]).decode()]})
    assert model.predict(as_text)["probability"][0] == pytest.approx(expected[0].probability, abs=1e-6)
    mixed = model.predict(pd.DataFrame({"image": [b"not an image at all", xray_bytes[3]]}))
    assert mixed["error"][0] and mixed["probability"][0] is None and mixed["label"][0] == ""
    assert mixed["label"][1] == expected[3].label

    # self-contained: the pipeline code, the checkpoint, a binary-column signature and an example
    local = loading.download_version(trained["version"], name)
    assert (local / "code" / "pipeline" / "inference" / "predict.py").exists()
    assert (local / "code" / "pipeline" / "data" / "preprocess.py").exists()
    assert not list(local.rglob("__pycache__"))
    assert (local / "artifacts" / "model.pt").exists()
    info = mlflow.models.get_model_info(f"models:/{name}/{trained['version']}")
    assert info.signature.inputs.to_dict() == [{"type": "binary", "name": "image", "required": True}]
    assert {c["name"] for c in info.signature.outputs.to_dict()} == {"probability", "label", "threshold", "error",
                                                                      "warning", "gate_score"}
    assert (local / "serving_input_example.json").exists()


def test_mlflow_models_serve_answers_a_real_xray(mlflow_server, trained, reg_params, xray_bytes, tmp_path, request):
    if "postgresql" in request.node.callspec.id:
        pytest.skip("serving reads the model through the same REST API: once (SQLite) is enough")
    from registry_helpers import free_port

    name = config.model_name(reg_params)
    aliases.promote(trained["version"], {"reason": "serve test"}, force=True)
    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
           "MLFLOW_TRACKING_URI": mlflow_server}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(Path(venv_bin) / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline, "models serve did not start"
            time.sleep(0.5)
        payload = {"dataframe_split": {"columns": ["image"],
                                       "data": [[base64.b64encode(b).decode()] for b in xray_bytes] + [["AAAA"]]}}
        resp = requests.post(f"http://127.0.0.1:{port}/invocations", json=payload, timeout=60)
        assert resp.status_code == 200, resp.text
        preds = resp.json()["predictions"]          # strict JSON: no NaN
        reference = Predictor.from_checkpoint(trained["checkpoint"], device="cpu")
        for got, raw in zip(preds, xray_bytes):
            want = answer_file(raw, reference).prediction
            assert got["label"] == want.label and got["error"] == ""
            assert got["probability"] == pytest.approx(want.probability, abs=1e-6)
            assert got["threshold"] == pytest.approx(want.threshold)
        assert preds[-1]["probability"] is None and preds[-1]["error"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
