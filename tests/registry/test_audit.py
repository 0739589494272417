"""Issue 27 item 4: the audit trail of alias moves against a real registry (SQLite and PostgreSQL).

Versions here are tiny (a run's `runs:/` source, no model uploaded): the trail is about who moved
which version, not about the weights. The real writers with real models are checked where those
already run: the challenger of a training run (test_tracking), the site adaptation
(test_local_evidence).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from registry_helpers import free_port_uri

from pipeline import cli
from pipeline.mlops import aliases, audit, server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny(mlflow_server, model_name, monkeypatch):
    """tiny() -> a new version of this test's model (no artifacts); every writer without an actor
    of its own is 'tester' ($XRAY_ACTOR), whatever Airflow context an earlier test left."""
    monkeypatch.setenv("XRAY_ACTOR", "tester")
    for var in ("AIRFLOW_CTX_DAG_RUN_ID", "AIRFLOW_CTX_DAG_ID"):
        monkeypatch.delenv(var, raising=False)
    client = server.connect(mlflow_server)
    client.create_registered_model(model_name)
    exp = client.get_experiment_by_name("audit-test-runs") or client.get_experiment(
        client.create_experiment("audit-test-runs"))
    run_id = client.create_run(exp.experiment_id).info.run_id

    def _tiny() -> int:
        return int(client.create_model_version(model_name, f"runs:/{run_id}/model", run_id=run_id).version)
    return _tiny


def moves(client, name) -> list[tuple]:
    return [(e["kind"], e["alias"], e["from_version"], e["to_version"]) for e in audit.timeline(client, name)]


def between(a: dict, b: dict | None) -> str:
    """An instant strictly between two entries (just after `a` when there is no `b`)."""
    t = audit.parse_time(a["at"])
    return (t + ((audit.parse_time(b["at"]) - t) / 2 if b else dt.timedelta(seconds=1))).isoformat()


def test_every_kind_of_move_is_recorded(mlflow_server, model_name, tiny):
    client = MlflowClient(mlflow_server)
    v1, v2, v3, v4 = tiny(), tiny(), tiny(), tiny()
    aliases.make_challenger(client, model_name, v1, "registered by run r1")
    aliases.promote(v1, {"reason": "no champion yet", "champion_version": None, "actor": "airflow:xray_retrain/run-1",
                         "dag_run_id": "run-1"})
    aliases.make_challenger(client, model_name, v2, "registered by run r2")
    approval = {"by": "dr.alice", "at": "2026-03-02T09:00:00+00:00", "comment": "shadow agreement 0.97", "via": "airflow-hitl"}
    aliases.promote(v2, {"reason": "beats v1", "champion_version": v1, "approval": approval})
    aliases.make_challenger(client, model_name, v3, "registered by run r3")
    aliases.reject(v3, {"reason": "worse under shift", "champion_version": v2, "actor": "airflow:xray_retrain/run-3"})
    aliases.rollback(reason="v2 misreads portable films", actor="bob")
    aliases.promote(v4, {"reason": "site operating point for v1", "champion_version": v1, "kind": "site_adaptation"})
    aliases.promote(v3, {"reason": "overruled by the clinical lead"}, force=True)

    assert moves(client, model_name) == [
        ("challenger", "challenger", None, v1), ("promotion", "champion", None, v1),
        ("challenger", "challenger", v1, v2), ("promotion", "champion", v1, v2),
        ("challenger", "challenger", v2, v3), ("rejection", "champion", v2, v3),
        ("rollback", "champion", v2, v1), ("site_adaptation", "champion", v1, v4),
        ("manual_promotion", "champion", v4, v3)]
    e = audit.timeline(client, model_name)
    assert [x["actor"] for x in e] == ["tester", "airflow:xray_retrain/run-1", "tester", "tester", "tester",
                                       "airflow:xray_retrain/run-3", "bob", "tester", "tester"]
    assert [x["reason"] for x in e][5:] == ["worse under shift", "v2 misreads portable films",
                                            "site operating point for v1", "overruled by the clinical lead"]
    assert e[1]["dag_run_id"] == "run-1" and e[0]["dag_run_id"] is None
    assert e[3]["approval"] == approval and all(x["approval"] is None for x in e if x is not e[3])
    times = [audit.parse_time(x["at"]) for x in e]
    assert times == sorted(times) and all(t.utcoffset() == dt.timedelta(0) for t in times)
    # stored as MLflow runs of <model>-audit, named for people, every fact a tag
    run = client.get_run(e[3]["id"])
    assert client.get_experiment(run.info.experiment_id).name == f"{model_name}-audit"
    assert run.info.run_name == f"promotion v{v1} -> v{v2}" and run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("audit.kind", "audit.from_version", "audit.to_version", "audit.actor",
                                          "audit.approved_by", "audit.approval_comment")} == {
        "audit.kind": "promotion", "audit.from_version": str(v1), "audit.to_version": str(v2),
        "audit.actor": "tester", "audit.approved_by": "dr.alice", "audit.approval_comment": "shadow agreement 0.97"}


def test_the_actor_comes_from_the_decision_the_environment_or_the_host(mlflow_server, model_name, tiny, monkeypatch):
    client = MlflowClient(mlflow_server)
    v1 = tiny()
    monkeypatch.delenv("XRAY_ACTOR")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "xray_retrain")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2026-03-03")
    first = audit.record(client, model_name, kind="challenger", alias=server.CHALLENGER, from_version=None,
                         to_version=v1, reason="r")
    assert first["actor"] == "airflow:xray_retrain/scheduled__2026-03-03" and first["dag_run_id"] == "scheduled__2026-03-03"
    for var in ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID"):
        monkeypatch.delenv(var)
    import getpass
    import socket

    assert audit.default_actor() == f"{getpass.getuser()}@{socket.gethostname()}"
    with pytest.raises(ValueError, match="unknown audit kind"):
        audit.record(client, model_name, kind="deletion", from_version=None, to_version=v1, reason="r")


def test_a_retried_promote_records_the_move_its_first_try_did_not(mlflow_server, model_name, tiny):
    client = MlflowClient(mlflow_server)
    v1, v2 = tiny(), tiny()
    assert aliases.promote(v1, {"reason": "no champion yet", "champion_version": None})["promoted"]
    # the first try of v2's promotion moved both aliases and died before writing its entry
    client.set_registered_model_alias(model_name, server.PREVIOUS, str(v1))
    client.set_registered_model_alias(model_name, server.CHAMPION, str(v2))
    assert moves(client, model_name) == [("promotion", "champion", None, v1)]
    decision = {"reason": "beats v1", "champion_version": v1, "actor": "airflow:xray_retrain/run-7"}
    assert aliases.promote(v2, decision)["already"]
    assert moves(client, model_name) == [("promotion", "champion", None, v1), ("promotion", "champion", v1, v2)]
    late = audit.timeline(client, model_name)[-1]
    assert late["actor"] == "airflow:xray_retrain/run-7" and late["reason"] == "beats v1"
    assert late["extra"] == {"recorded_late": "true"}
    assert aliases.promote(v2, decision)["already"]   # a second retry: nothing more to record
    assert len(audit.timeline(client, model_name)) == 2
    # a retried rejection is recorded once too
    v3 = tiny()
    aliases.reject(v3, {"reason": "worse", "champion_version": v2})
    aliases.reject(v3, {"reason": "worse", "champion_version": v2})
    assert [m[0] for m in moves(client, model_name)] == ["promotion", "promotion", "rejection"]


def history(uri: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "pipeline", "history", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_history_at_follows_promotions_and_rollbacks(mlflow_server, model_name, tiny, capsys):
    client = MlflowClient(mlflow_server)
    v1, v2 = tiny(), tiny()
    approval = {"by": "dr.alice", "at": "2026-03-02T09:00:00+00:00", "comment": "ok", "via": "airflow-hitl"}
    aliases.promote(v1, {"reason": "no champion yet", "champion_version": None, "approval": approval})
    aliases.promote(v2, {"reason": "beats v1", "champion_version": v1, "actor": "airflow:xray_retrain/run-2"})
    aliases.rollback(reason="v2 misreads portable films", actor="bob")
    p1, p2, rb = audit.timeline(client, model_name)

    def served(at: str) -> dict:
        out = history(mlflow_server, "--json", "--name", model_name, "--at", at)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    during_v1, during_v2, after_rollback = served(between(p1, p2)), served(between(p2, rb)), served(between(rb, None))
    assert (during_v1["version"], during_v1["moved_by"], during_v1["approval"]["by"]) == (v1, "tester", "dr.alice")
    assert (during_v2["version"], during_v2["moved_by"], during_v2["reason"]) == (v2, "airflow:xray_retrain/run-2",
                                                                                 "beats v1")
    assert during_v2["approval"] is None and during_v2["until"] == rb["at"]
    # after the rollback v1 serves again: moved back by bob, put in service by the approved promotion
    assert (after_rollback["version"], after_rollback["kind"], after_rollback["moved_by"]) == (v1, "rollback", "bob")
    assert after_rollback["decision"]["id"] == p1["id"] and after_rollback["approval"]["by"] == "dr.alice"
    # the same command in-process from here on (a subprocess costs seconds of imports)
    paris = audit.parse_time(between(p2, rb)).astimezone(dt.timezone(dt.timedelta(hours=1))).isoformat()
    assert cli.main(["history", "--json", "--name", model_name, "--at", paris]) == 0   # another zone, same instant
    assert json.loads(capsys.readouterr().out)["version"] == v2
    assert cli.main(["history", "--json", "--name", model_name, "--at", "2001-01-01"]) == 1   # before any move
    err = capsys.readouterr().err
    assert "no champion move" in err and "first recorded move" in err
    assert cli.main(["history", "--json", "--name", model_name]) == 0     # the whole trail, machine-readable
    trail = json.loads(capsys.readouterr().out)
    assert trail["total"] == 3 and [e["kind"] for e in trail["entries"]] == ["promotion", "promotion", "rollback"]


def test_history_table_and_clear_errors(mlflow_server, model_name, tiny, capsys, monkeypatch):
    assert cli.main(["history", "--name", model_name]) == 1
    assert f"no audit entry for '{model_name}'" in capsys.readouterr().err
    v1, v2 = tiny(), tiny()
    aliases.promote(v1, force=True)
    aliases.promote(v2, {"reason": "beats v1", "champion_version": v1})
    assert cli.main(["history", "--name", model_name]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("when (UTC)") and len(out) == 3
    assert "manual_promotion" in out[1] and f"none -> v{v1}" in out[1] and "tester" in out[1]
    assert f"v{v1} -> v{v2}" in out[2] and "beats v1" in out[2]
    assert cli.main(["history", "--name", model_name, "--limit", "1"]) == 0
    assert "the last 1 of 2 entries" in capsys.readouterr().out
    first, second = audit.timeline(MlflowClient(mlflow_server), model_name)
    assert cli.main(["history", "--name", model_name, "--at", between(second, None)]) == 0
    out = capsys.readouterr().out
    assert f"v{v2} was the champion" in out and "beats v1" in out and "no sign-off recorded" in out
    # a bare date: the champion at its start, and the moves of that day
    assert cli.main(["history", "--name", model_name, "--at", first["at"][:10]]) == 0
    day = capsys.readouterr().out
    assert f"then that day: {first['at']} manual_promotion v{v1}" in day and f"promotion v{v2} by tester" in day
    assert cli.main(["history", "--name", model_name, "--at", "3 March"]) == 2
    assert "not an ISO date" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", free_port_uri())
    assert cli.main(["history", "--name", model_name]) == 1
    assert "MLflow tracking server unreachable" in capsys.readouterr().err
