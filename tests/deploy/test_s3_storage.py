"""The S3 path of the stack's storage, against an S3-compatible server that installs from PyPI:
moto's server (`moto`, ThreadedMotoServer; MinIO has no package here). The compose stack uses
named volumes by default and this path when MLFLOW_ARTIFACTS_DESTINATION / XRAY_DVC_REMOTE are
s3:// URLs (docs/operations.md "Production stack").

- DVC: pipeline.data.versioning publishes a dataset to s3://dvc/chest-xray through XRAY_DVC_REMOTE +
  XRAY_DVC_S3_ENDPOINT and pulls it back into an empty workspace;
- MLflow: a real server with --artifacts-destination s3://mlflow/artifacts (scripts/mlflow_server.sh)
  stores a client's artifact in the bucket; the client holds no S3 keys (MLflow proxies them).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer
    import boto3

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"])
    for bucket in ("dvc", "mlflow"):
        client.create_bucket(Bucket=bucket)
    yield url, client
    server.stop()


def keys_in(client, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_dvc_remote_on_s3(s3, tmp_path):
    url, client = s3
    repo = tmp_path / "repo"
    (repo / "data/chest_xray/train/NORMAL").mkdir(parents=True)
    for i in range(3):
        (repo / f"data/chest_xray/train/NORMAL/img{i}.jpeg").write_bytes(os.urandom(1000 + i))
    env = {**os.environ, **KEYS, "XRAY_REPO": str(repo), "XRAY_DVC_REMOTE": "s3://dvc/chest-xray",
           "XRAY_DVC_S3_ENDPOINT": url, "XRAY_GIT_PUSH": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run("git init -q && dvc init -q && git -c user.name=t -c user.email=t@t commit -qm init",
                   shell=True, cwd=repo, check=True, env=env)
    run = lambda *args: subprocess.run([sys.executable, "-m", "pipeline.data.versioning", "--repo", str(repo), *args],
                                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    proc = run("publish")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stored = keys_in(client, "dvc")
    assert len([k for k in stored if k.startswith("chest-xray/")]) >= 3, stored
    # an empty workspace (no data, no cache) gets the same files back from the bucket
    shutil.rmtree(repo / "data/chest_xray")
    shutil.rmtree(repo / ".dvc/cache", ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", "from pipeline.data import versioning; print(versioning.pull())"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((repo / "data/chest_xray/train/NORMAL").glob("*.jpeg"))) == 3


def test_mlflow_artifacts_on_s3(s3, tmp_path):
    url, client = s3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **KEYS, "MLFLOW_DIR": str(tmp_path / "mlflow"), "MLFLOW_PORT": str(port),
           "MLFLOW_WORKERS": "1", "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow/artifacts",
           "MLFLOW_S3_ENDPOINT_URL": url, "MLFLOW_START_TIMEOUT_S": "400"}
    script = REPO / "scripts/mlflow_server.sh"
    proc = subprocess.run([str(script), "--background"], env=env, capture_output=True, text=True, timeout=450)
    try:
        assert proc.returncode == 0, proc.stderr[-2000:]
        # the client: no S3 keys, only the tracking URI
        # (and no experiment id leaked by an earlier test's mlflow.set_experiment: another server's)
        client_env = {k: v for k, v in os.environ.items()
                      if not k.startswith("AWS_") and k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
        client_env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
        code = ("import mlflow, pathlib\n"
                "p = pathlib.Path('note.txt'); p.write_text('stored in S3')\n"
                "with mlflow.start_run() as r:\n    mlflow.log_artifact(str(p))\n"
                "print(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path='note.txt'))\n")
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=client_env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert Path(out.stdout.strip().splitlines()[-1]).read_text() == "stored in S3"
        assert any(k.startswith("artifacts/") and k.endswith("note.txt") for k in keys_in(client, "mlflow"))
    finally:
        subprocess.run([str(script), "--stop"], env=env, capture_output=True, timeout=60)
