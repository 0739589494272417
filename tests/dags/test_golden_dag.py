"""The golden evaluation set through a real `dag.test()` run: a golden folder edited after it was
pinned stops the run in `validate` (one try, no retry), before anything is trained."""
from __future__ import annotations

import uuid

import pytest

from dagtest_utils import TINY_OVERRIDES, airflow_env, migrate, mlflow_client, policy_params, run_dag, shared_root, \
    states, versions

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def test_an_edited_golden_set_stops_the_dag_before_training(world, mlflow_server, tmp_path):
    from pipeline.data import dataset, golden

    gold = tmp_path / "golden"   # outside the data version; whole patients of the real training folder
    for sample in dataset.subset(dataset.discover(shared_root() / "chest_xray" / "train"), 12, seed=11):
        (gold / sample.path.parent.name).mkdir(parents=True, exist_ok=True)
        (gold / sample.path.parent.name / sample.path.name).symlink_to(sample.path.resolve())
    pin = golden.fingerprint(gold)[0]
    name = f"dagtest-golden-{uuid.uuid4().hex[:8]}"
    params = policy_params(tmp_path / "params.yaml", f"evaluate.golden_dir={gold}",
                           f"evaluate.golden_fingerprint={pin}", "data.min_images_per_class=10")
    env = airflow_env(tmp_path / "airflow", XRAY_REPO=str(world.workspace), XRAY_MODEL_NAME=name,
                      MLFLOW_TRACKING_URI=mlflow_server, XRAY_PARAMS=params)
    migrate(env)
    world.add_images(30, seed=0)
    world.publish()
    # someone relabels one golden film after it was pinned
    film = sorted((gold / "NORMAL").iterdir())[0]
    film.rename(gold / "PNEUMONIA" / film.name)

    run = run_dag(env, {"force": True, "overrides": TINY_OVERRIDES})
    assert run["state"] == "failed" and states(run)["detect"] == "success"
    assert states(run)["validate"] == "failed" and run["tasks"]["validate"]["tries"] == 1
    assert states(run)["train"] in ("upstream_failed", None)
    assert "changed since it was pinned" in run["log"] and pin in run["log"]
    assert versions(mlflow_client(mlflow_server), name) == {}
