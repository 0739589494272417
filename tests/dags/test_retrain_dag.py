"""The retraining DAG end to end: real `dag.test()` runs against a real git + DVC remote, a real
MLflow server and a real Airflow metadata database (SQLite here; the DAG's runs on PostgreSQL are
those of test_approval_dag.py, whose first test checks what test_dag_on_postgresql did here).

Assertions are on the registry (aliases, version tags) and on Airflow's task states, not on logs.
"""
from __future__ import annotations

import uuid

import pytest

from dagtest_utils import (TINY_OVERRIDES, airflow_env, alias, migrate, mlflow_client, policy_params, run_dag,
                           states, versions)

from pipeline.mlops import audit

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

TRAINED_PATH = {"detect": "success", "validate": "success", "train": "success", "evaluate": "success",
                "decide": "success", "notify": "success"}


def test_retraining_lifecycle(world, webhook, mlflow_server, tmp_path):
    """promote a first champion -> skip unchanged data -> retrain on new data -> reject a bad
    forced run -> fail (and notify) on a dataset with too many rejected files."""
    name = f"dagtest-{uuid.uuid4().hex[:8]}"
    env = airflow_env(tmp_path / "airflow", XRAY_REPO=str(world.workspace), XRAY_MODEL_NAME=name,
                      MLFLOW_TRACKING_URI=mlflow_server, AIRFLOW_CONN_XRAY_APPRISE=webhook.connection,
                      XRAY_PARAMS=policy_params(tmp_path / "params.yaml"))
    migrate(env)
    client = mlflow_client(mlflow_server)
    conf = {"overrides": TINY_OVERRIDES}

    # -- a data engineer imports a first data version (real images, about 100 per class)
    world.add_images(100, seed=0)
    world.publish()
    hash1 = world.pointer_hash()

    # -- run 1: new data, no champion -> train, promote the first champion
    run1 = run_dag(env, conf)
    assert run1["state"] == "success", run1["log"][-3000:]
    assert states(run1).items() >= {**TRAINED_PATH, "promote": "success", "reject": "skipped"}.items()
    assert world.pointer_hash(world.workspace) == hash1          # git pull + dvc pull reached the worker
    assert (world.workspace / "data" / "chest_xray" / "train").is_dir()
    v1 = run1["xcom"]["train"]["version"]
    assert alias(client, name, "champion") == v1
    tags1 = versions(client, name)[v1]
    assert tags1["decision"] == "promoted" and tags1["data.version"] == hash1
    assert "no champion yet" in tags1["decision_reason"]
    trail = audit.timeline(client, name)   # issue 27: both moves on record, with who, when and why
    assert [(e["kind"], e["to_version"]) for e in trail] == [("challenger", v1), ("promotion", v1)]
    assert trail[1]["actor"].startswith("airflow:xray_retrain/") and trail[1]["dag_run_id"] in trail[1]["actor"]
    assert "no champion yet" in trail[1]["reason"] and trail[1]["at"]
    run = client.get_run(run1["xcom"]["train"]["run_id"])
    assert run.data.tags["data.version"] == hash1 and run.data.tags["trigger"] == "airflow:new-data"
    assert run.data.params["preprocess.image_size"] == "64"   # the run's overrides reached training
    # issue 28: where the cycle's minutes go, step by step, handed on by each task (pipeline.timing)
    steps = run1["steps"]
    assert {"train / epochs", "train / operating point", "train / gate fit", "register / onnx export",
            "register / int8 quantize", "register / log pyfunc"} <= set(steps["train"]), steps
    assert {"score challenger", "fast-path check", "evidence"} <= set(steps["evaluate"]), steps
    assert 0 < steps["train"]["train / epochs"] < steps["train"]["train"] <= run1["tasks"]["train"]["seconds"]
    assert client.download_artifacts(run.info.run_id, "timing/steps.json")   # and on the training run
    decisions = webhook.titled("challenger v")     # through apprise (connection xray_apprise)
    assert len(decisions) == 1 and f"challenger v{v1} PROMOTED" in decisions[0]["title"]
    assert f"/models/{name}/versions/{v1}" in decisions[0]["message"]

    # -- run 2: same data version as the champion -> short-circuit, nothing trained
    run2 = run_dag(env, conf)
    assert run2["state"] == "success"
    assert states(run2)["detect"] == "success"
    assert {states(run2)[t] for t in ("validate", "train", "evaluate", "decide", "promote", "reject",
                                       "notify")} == {"skipped"}
    assert set(versions(client, name)) == {v1} and alias(client, name, "champion") == v1

    # -- a typo in a manual run's overrides fails at once (no retries), and is notified
    typo = run_dag(env, {"force": True, "overrides": ["train.epochz=3"]})
    assert typo["state"] == "failed" and states(typo)["detect"] == "failed"
    assert typo["tasks"]["detect"]["tries"] == 1 and states(typo)["train"] in ("upstream_failed", None)
    assert "task detect" in webhook.titled("FAILURE")[-1]["title"]
    assert "train.epochz" in webhook.titled("FAILURE")[-1]["message"]

    # -- more images arrive: a new data version; run 3 retrains and decides
    assert world.add_images(30, seed=1) > 0
    world.publish()
    hash2 = world.pointer_hash()
    assert hash2 != hash1 and len(world.git_log()) == 3     # dvc init + 2 data versions
    run3 = run_dag(env, conf)
    assert run3["state"] == "success", run3["log"][-3000:]
    assert states(run3).items() >= TRAINED_PATH.items()
    v2 = run3["xcom"]["train"]["version"]
    tags2 = versions(client, name)[v2]
    assert v2 != v1 and tags2["data.version"] == hash2
    assert tags2["decision"] in ("promoted", "rejected") and tags2["compared_with"] == str(v1)
    promoted = tags2["decision"] == "promoted"
    assert states(run3)["promote" if promoted else "reject"] == "success"
    assert states(run3)["reject" if promoted else "promote"] == "skipped"
    champion = v2 if promoted else v1
    assert alias(client, name, "champion") == champion
    if promoted:
        assert alias(client, name, "previous_champion") == v1
    assert run3["xcom"]["evaluate"]["champion"]["version"] == v1   # both scored on the same held-out set
    assert run3["xcom"]["evaluate"]["n_test"] == run3["xcom"]["evaluate"]["challenger"]["metrics"]["n"]

    # -- forced run with a deliberately bad setting (an untrained network): rejected, champion stays
    bad = run_dag(env, {"force": True, "overrides": TINY_OVERRIDES + ["train.epochs=0"]})
    assert bad["state"] == "success", bad["log"][-3000:]
    assert states(bad)["reject"] == "success" and states(bad)["promote"] == "skipped"
    v3 = bad["xcom"]["train"]["version"]
    tags3 = versions(client, name)[v3]
    assert tags3["decision"] == "rejected" and "floor" in tags3["decision_reason"]
    assert tags3["data.version"] == hash2                        # forced: same data, retrained anyway
    assert alias(client, name, "champion") == champion
    assert alias(client, name, "challenger") == v3
    assert client.get_run(bad["xcom"]["train"]["run_id"]).data.tags["trigger"] == "airflow:forced"
    assert "REJECTED" in webhook.titled("challenger v")[-1]["title"]

    # -- a corrupt file in a new data version + a zero rejection budget: validate fails the run,
    #    nothing is trained, the failure is notified
    bad_file = world.src / "train" / "NORMAL" / "corrupt-upload.jpeg"
    bad_file.write_bytes(b"this is not a JPEG")
    world.publish()
    strict = policy_params(tmp_path / "strict.yaml", "data.max_rejected_fraction=0.0")  # not a run option
    failed = run_dag({**env, "XRAY_PARAMS": strict}, {"overrides": TINY_OVERRIDES})
    assert failed["state"] == "failed"
    assert states(failed)["validate"] == "failed" and states(failed)["train"] in ("upstream_failed", None)
    assert set(versions(client, name)) == {v1, v2, v3} and alias(client, name, "champion") == champion
    failures = webhook.titled("FAILURE")
    assert failures and "task validate" in failures[-1]["title"] and "rejected" in failures[-1]["message"]
