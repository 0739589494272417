"""Data versions with a real DVC remote: the import script (`make data`), the worker's update
(git pull + dvc pull), remote selection by environment, and the dvc.yaml pipeline."""
from __future__ import annotations

import json
import shutil
import sys

import pytest
import yaml

from dagtest_utils import REPO, TINY_OVERRIDES, TINY_POLICY, base_env, sh

pytestmark = pytest.mark.timeout(600)


def _files(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _contents(folder) -> int:
    """Distinct file contents (DVC stores byte-identical files once)."""
    import hashlib

    return len({hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()})


def _remote_objects(remote) -> int:
    return sum(1 for p in remote.rglob("*") if p.is_file())


def test_import_script_versions_data(world):
    from pipeline.data import versioning

    world.add_images(15, seed=0)
    world.publish()
    v1 = versioning.data_version(world.engineer)
    images = _files(world.src)
    assert v1.nfiles == len(images) > 20
    assert _files(world.engineer / "data" / "chest_xray") == images
    # only the pointer is in git; the images are in the cache and the remote
    tracked = sh(["git", "ls-files"], cwd=world.engineer).stdout.split()
    assert "data/chest_xray.dvc" in tracked and not any(t.endswith(".jpeg") for t in tracked)
    assert _remote_objects(world.remote) == _contents(world.src) + 1   # contents + the .dir listing
    assert sh(["git", "status", "--porcelain"], cwd=world.engineer).stdout.strip() == ""

    # same folder again: same version, no new commit, nothing pushed
    commits = world.git_log()
    world.publish()
    assert world.pointer_hash() == v1.hash and world.git_log() == commits

    # more images: a new version, committed and pushed (git and DVC)
    assert world.add_images(25, seed=1) > 0
    world.publish()
    v2 = versioning.data_version(world.engineer)
    assert v2.hash != v1.hash and v2.nfiles == len(_files(world.src)) > v1.nfiles
    assert len(world.git_log()) == len(commits) + 1 and world.git_log()[0].startswith("data: import src")
    origin_head = sh(["git", "rev-parse", "HEAD"], cwd=world.origin).stdout.strip()
    assert origin_head == v2.git_commit

    # mirror mode: a file removed from the source leaves the dataset (another version)
    gone = sorted((world.src / "train" / "NORMAL").iterdir())[0]
    gone.unlink()
    world.publish()
    v3 = versioning.data_version(world.engineer)
    assert v3.nfiles == v2.nfiles - 1
    assert not (world.engineer / "data" / "chest_xray" / "train" / "NORMAL" / gone.name).exists()

    # the Airflow worker's clone catches up: git pull + dvc pull
    info = versioning.update(world.workspace)
    assert info["hash"] == v3.hash and info["git"]["pulled"] and info["git"]["after"] == v3.git_commit
    assert _files(world.workspace / "data" / "chest_xray") == _files(world.src)
    again = versioning.update(world.workspace)                         # idempotent
    assert again["hash"] == v3.hash and again["git"]["before"] == again["git"]["after"]


def test_import_script_rejects_bad_input(world, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for source in (tmp_path / "missing", empty):
        proc = sh([str(REPO / "scripts" / "import_data.sh"), str(source)], env=base_env(XRAY_REPO=str(world.engineer)),
                  check=False)
        assert proc.returncode == 2 and "import_data:" in proc.stderr
    assert not (world.engineer / "data" / "chest_xray.dvc").exists()


def test_remote_from_environment(world, tmp_path, monkeypatch):
    """XRAY_DVC_REMOTE redirects push/pull to another remote without touching the committed config."""
    from pipeline.data import versioning

    other = tmp_path / "other-remote"
    world.add_images(8, seed=3)
    committed_config = (world.engineer / ".dvc" / "config").read_text()
    world.publish(XRAY_DVC_REMOTE=str(other))
    assert _remote_objects(other) == _contents(world.src) + 1
    assert _remote_objects(world.remote) == 0                          # the default remote was not used
    assert (world.engineer / ".dvc" / "config").read_text() == committed_config
    assert str(other) in (world.engineer / ".dvc" / "config.local").read_text()

    # the worker pulls from that remote only when told so
    with pytest.raises(versioning.VersioningError, match="dvc pull failed"):
        versioning.update(world.workspace)
    monkeypatch.setenv("XRAY_DVC_REMOTE", str(other))
    assert versioning.update(world.workspace)["hash"] == world.pointer_hash()


def test_pull_without_a_data_version_fails_clearly(world):
    from pipeline.data import versioning

    assert versioning.data_version(world.workspace) is None
    with pytest.raises(versioning.NoDataVersion, match="make data"):
        versioning.pull(world.workspace)


def test_dvc_pipeline_repro_metrics_params_plots(world):
    """`dvc repro` runs validate -> train -> evaluate with the pipeline CLI; metrics, params and plots show."""
    repo = world.engineer
    world.add_images(40, seed=0)
    world.publish()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    # the data repository is the project repository in real life: the stages' code deps live in it
    shutil.copytree(REPO / "pipeline", repo / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    from pipeline.settings import config

    # 40 images a class: under the default data.min_images_per_class
    params = config.load_params(REPO / "params.yaml", TINY_OVERRIDES + TINY_POLICY + ["data.min_images_per_class=10"]).to_dict()
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = base_env()
    env.pop("PYTHONPATH", None)
    dvc = [sys.executable, "-m", "dvc"]

    sh(dvc + ["repro"], cwd=repo, env=env, timeout=500)
    for out in ("results/validation.json", "results/train/model.pt", "results/train/metrics.json",
                "results/train/history.json", "results/evaluate/metrics.json"):
        assert (repo / out).exists(), out
    assert (repo / "dvc.lock").exists()
    metrics = json.loads(sh(dvc + ["metrics", "show", "--json"], cwd=repo, env=env).stdout)
    flat = json.dumps(metrics)
    assert "results/train/metrics.json" in flat and "results/evaluate/metrics.json" in flat and '"auc"' in flat

    sh("git add -A && git commit -qm 'experiment baseline'", cwd=repo)
    status = sh(dvc + ["status", "--json"], cwd=repo, env=env).stdout
    assert json.loads(status) == {}                                    # everything up to date
    old_lr = params["train"]["lr"]
    params["train"]["lr"] = old_lr * 5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    diff = json.loads(sh(dvc + ["params", "diff", "--json"], cwd=repo, env=env).stdout)
    assert (diff["params.yaml"]["train.lr"]["old"], diff["params.yaml"]["train.lr"]["new"]) == (old_lr, old_lr * 5)
    assert "train" in json.loads(sh(dvc + ["status", "--json"], cwd=repo, env=env).stdout)

    sh(dvc + ["plots", "show", "-o", str(repo / "plots-out")], cwd=repo, env=env)
    page = (repo / "plots-out" / "index.html").read_text()
    assert "val_auc" in page and "roc" in page.lower()


def test_publish_announces_the_data_asset_to_airflow(monkeypatch):
    """A new data version is announced to Airflow as an asset event (the DAG is scheduled on the
    asset, daily as a fallback); an unreachable or unconfigured Airflow is said, never an error."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline.settings import config
    from pipeline.data import versioning

    seen: list[tuple[str, str, dict | None]] = []

    class FakeAirflow(BaseHTTPRequestHandler):
        def _reply(self, body: dict, code: int = 200):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(("POST", self.path, body))
            if self.path == "/auth/token":
                return self._reply({"access_token": "t0k"} if body["password"] == "pw" else {}, 201)
            assert self.headers["Authorization"] == "Bearer t0k"
            self._reply({"id": 1, "asset_id": body["asset_id"]})

        def do_GET(self):  # noqa: N802
            seen.append(("GET", self.path, None))
            self._reply({"assets": [{"id": 7, "uri": config.DATA_ASSET_URI}, {"id": 8, "uri": "s3://other"}]})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAirflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    version = versioning.DataVersion("5c30ba698af427263cde2ff8054415f2", 5232, 1, "data/chest_xray", "abc")
    try:
        monkeypatch.setenv("AIRFLOW_USER", "engineer")
        monkeypatch.setenv("AIRFLOW_PASSWORD", "pw")
        assert versioning.announce(version, url) is True
        event = seen[-1]
        assert event[:2] == ("POST", "/api/v2/assets/events")
        assert event[2] == {"asset_id": 7, "extra": {"data_version": version.hash, "nfiles": 5232, "git_commit": "abc"}}
        monkeypatch.setenv("AIRFLOW_PASSWORD", "wrong")        # refused login: said, not raised
        assert versioning.announce(version, url) is False
    finally:
        server.shutdown()
    assert versioning.announce(version, url) is False          # Airflow down
    monkeypatch.delenv("AIRFLOW_URL", raising=False)
    assert versioning.announce(version) is False               # not configured
