"""A version registered by the code before the stage packages (flat `pipeline/`, git commit 9756f4e)
still loads: evaluation's way (mlops.loading, from its checkpoint) and the pyfunc's way (its own copy
of the old code, in a fresh process as `mlflow models serve` runs it). The torch-free site refuses it
with the command that fixes it, `xray reexport`, after which the copy serves the same answers.
See docs/architecture.md and docs/web.md."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from pipeline.inference.answer import answer_file
from pipeline.inference.predict import Predictor
from pipeline.mlops import aliases, audit, loading, server
from pipeline.inference.served import NotServable

REPO = Path(__file__).resolve().parents[2]
OLD_LAYOUT = "9756f4e"   # the last commit with the flat pipeline/ package


@pytest.fixture(scope="module")
def old_code(tmp_path_factory) -> Path:
    run = subprocess.run(["git", "-C", str(REPO), "archive", OLD_LAYOUT, "pipeline"], capture_output=True)
    if run.returncode != 0:   # a shallow clone without that commit: nothing to compare with
        pytest.skip(f"commit {OLD_LAYOUT} not in this clone: {run.stderr.decode().strip()[:200]}")
    root = tmp_path_factory.mktemp("old-layout")
    with tarfile.open(fileobj=io.BytesIO(run.stdout)) as tar:
        tar.extractall(root, filter="data")
    assert (root / "pipeline" / "registry.py").exists() and not (root / "pipeline" / "mlops").exists()
    return root


def _known(values: dict, schema: dict) -> dict:
    """`values` restricted to the keys `schema` has (free mappings such as floors kept whole)."""
    return {k: _known(v, schema[k]) if isinstance(v, dict) and isinstance(schema[k], dict) and schema[k] else v
            for k, v in values.items() if k in schema}


def test_a_version_logged_by_the_old_layout_still_loads(old_code, mlflow_server, trained, reg_params, model_name,
                                                       xray_bytes, tmp_path):
    params_file = tmp_path / "params.yaml"   # these settings, in the old schema (later sections left out)
    old_schema = yaml.safe_load(subprocess.run(["git", "-C", str(REPO), "show", f"{OLD_LAYOUT}:params.yaml"],
                                               capture_output=True, text=True, check=True).stdout)
    params_file.write_text(yaml.safe_dump(_known(reg_params.to_dict(), old_schema)))
    log_old = ("import json, sys; from pipeline import config, tracking; "
               "r = tracking.register_checkpoint(sys.argv[1], config.load_params(sys.argv[2]), run_name='old-layout', "
               "tags={'trigger': 'test'}); print(json.dumps({'version': int(r['version'])}))")
    env = {**os.environ, "PYTHONPATH": str(old_code), "MLFLOW_TRACKING_URI": mlflow_server, "XRAY_MODEL_NAME": model_name}
    run = subprocess.run([sys.executable, "-c", log_old, str(trained["checkpoint"]), str(params_file)], cwd=old_code,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    version = json.loads(run.stdout.strip().splitlines()[-1])["version"]

    reference = Predictor.from_checkpoint(trained["checkpoint"], device="cpu")
    expected = [answer_file(b, reference).prediction.probability for b in xray_bytes[:3]]

    # the site's way: this code, the version's checkpoint
    predictor, mv = loading.load_version(version, name=model_name)
    assert int(mv.version) == version
    assert [answer_file(b, predictor).prediction.probability for b in xray_bytes[:3]] == pytest.approx(expected, abs=1e-6)

    # the pyfunc's way: its own copy of the old code, in a process that has not imported this one
    serve = ("import base64, json, sys; import mlflow.pyfunc, pandas as pd; "
             "m = mlflow.pyfunc.load_model(sys.argv[1]); import pipeline; "
             "rows = [base64.b64decode(x) for x in json.loads(sys.stdin.read())]; "
             "out = m.predict(pd.DataFrame({'image': rows})); "
             "print(json.dumps({'p': out['probability'].tolist(), 'code': pipeline.__file__}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    import base64

    run = subprocess.run([sys.executable, "-c", serve, f"models:/{model_name}/{version}"], cwd=tmp_path, env=env,
                         input=json.dumps([base64.b64encode(b).decode() for b in xray_bytes[:3]]),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert "/code/pipeline/" in got["code"]     # the version's own (old) code answered, not this checkout
    assert got["p"] == pytest.approx(expected, abs=1e-6)

    # the site's way: refused, with the reason and the command; the command makes a copy that serves
    with pytest.raises(NotServable, match=rf"v{version} cannot be served: .*serving.json.*xray reexport --version {version}"):
        loading.serve_version(version, model_name)
    assert any("xray reexport" in p for p in loading.serving_check(version, model_name))
    aliases.promote(version, name=model_name, force=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "XRAY_MODEL_NAME": model_name}
    run = subprocess.run([sys.executable, "-m", "pipeline", "reexport", str(version), "--promote", "--json"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = json.loads(run.stdout[run.stdout.index("{"):])
    copy = out["reexported_as"]
    assert out["promoted"] and copy > version
    served, mv = loading.serve_alias(name=model_name)
    assert int(mv.version) == copy and served.engine_name == "openvino-f32"
    assert mv.tags["reexport_of"] == str(version)
    assert [answer_file(b, served, heatmap=True).prediction.probability for b in xray_bytes[:3]] == \
        pytest.approx(expected, abs=1e-4)
    moves = audit.timeline(server.connect(), model_name, server.CHAMPION)
    assert moves[-1]["kind"] == "manual_promotion" and moves[-1]["to_version"] == copy
    assert f"re-export of v{version}" in moves[-1]["reason"]
