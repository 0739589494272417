"""Issue 11 items 6 and 7 through real `dag.test()` runs: a run's overrides cannot rewrite the
promotion policy or the split, and a data version already decided is not retrained (unless forced)."""
from __future__ import annotations

import uuid

import pytest

from dagtest_utils import (REPO, TINY_OVERRIDES, airflow_env, migrate, mlflow_client, policy_params, run_dag,
                           states, versions)

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]
DOWNSTREAM = ("validate", "train", "evaluate", "decide", "promote", "reject", "notify")


def test_only_training_side_keys_are_overridable():
    import importlib.util

    spec = importlib.util.spec_from_file_location("retrain_xray", REPO / "dags" / "retrain_xray.py")
    module = importlib.util.module_from_spec(spec)   # a DAG file is a script, not a package module
    spec.loader.exec_module(module)
    check_overrides = module.check_overrides

    assert check_overrides(TINY_OVERRIDES + ["model.init=imagenet", "evaluate.target_sensitivity=0.9"]) == []
    bad = ["promotion.floors.auc=0", "promotion.min_improvement=-1", "data.seed=7", "data.subset_per_class=5",
           "registry.model_name=other", "dag.retrain_on_unchanged_data=true", "trainx.lr=1",
           "evaluate.stress_images=1", "promotion.non_inferiority_margin=1"]
    assert check_overrides(bad) == bad


def test_policy_overrides_fail_and_decided_data_is_not_retrained(world, mlflow_server, tmp_path, monkeypatch):
    from pipeline.mlops import aliases

    name = f"dagtest-hard-{uuid.uuid4().hex[:8]}"
    env = airflow_env(tmp_path / "airflow", XRAY_REPO=str(world.workspace), XRAY_MODEL_NAME=name,
                      MLFLOW_TRACKING_URI=mlflow_server, XRAY_PARAMS=policy_params(tmp_path / "params.yaml"))
    migrate(env)
    world.add_images(30, seed=0)
    world.publish()
    data_version = world.pointer_hash()

    # item 6: a forced run that tries to relax the policy / move the held-out patients fails at once
    run = run_dag(env, {"force": True, "overrides": TINY_OVERRIDES + ["promotion.min_improvement=-1",
                                                                      "data.seed=7"]})
    assert run["state"] == "failed" and states(run)["detect"] == "failed"
    assert run["tasks"]["detect"]["tries"] == 1 and states(run)["train"] in ("upstream_failed", None)
    assert "not overridable in a DAG run" in run["log"] and "promotion.min_improvement=-1" in run["log"]
    assert versions(mlflow_client(mlflow_server), name) == {}

    # item 7: a model trained on this data version was already rejected (no champion exists). Only
    # the registry's record is read (tags, aliases): a version without uploaded weights stands for it.
    monkeypatch.setenv("XRAY_MODEL_NAME", name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client = mlflow_client(mlflow_server)
    client.create_registered_model(name)
    exp = client.get_experiment_by_name("dag-hardening-runs") or client.get_experiment(
        client.create_experiment("dag-hardening-runs"))
    run_id = client.create_run(exp.experiment_id, run_name="rejected-before").info.run_id
    rejected = int(client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id,
                                               tags={"data.version": data_version}).version)
    aliases.reject(rejected, {"reason": "under the floors", "champion_version": None})
    assert versions(client, name)[rejected]["decision"] == "rejected"

    daily = run_dag(env, {"overrides": TINY_OVERRIDES})
    assert daily["state"] == "success", daily["log"][-3000:]
    assert states(daily)["detect"] == "success"
    assert {states(daily)[t] for t in DOWNSTREAM} == {"skipped"}
    assert f"already decided: v{rejected} rejected" in daily["log"]
    assert set(versions(client, name)) == {rejected}
