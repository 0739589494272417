"""Issue 11 (items 7, 8, 13, 16) against a real registry: idempotent promote, decided data versions,
the serving check of a manual promote, and the promotion lock's stale-breaking."""
from __future__ import annotations

import random
import threading
import time
import types

from mlflow import MlflowClient
from registry_helpers import contend

from pipeline import cli
from pipeline.mlops import aliases, server, loading, tracking, versions


def tags(client, name, version) -> dict:
    return client.get_model_version(name, str(version)).tags


def test_retried_promote_is_idempotent(mlflow_server, model_name, register):
    """Item 8: an Airflow retry of `promote` after the first try moved the alias is not "stale"."""
    client = MlflowClient(mlflow_server)
    v1, v2 = register("constant"), register("good")
    first = {"promote": True, "reason": "no champion yet", "champion_version": None}
    assert aliases.promote(v1, first)["promoted"]
    retry = aliases.promote(v1, first)                       # same decision, the alias already moved
    assert retry["already"] and not retry["stale"] and retry["champion"] == v1
    assert tags(client, model_name, v1)["decision"] == "promoted"   # not overwritten with "stale"

    # a first try that moved the alias and died before tagging: the retry completes the tags
    client.set_registered_model_alias(model_name, "champion", str(v2))
    retry = aliases.promote(v2, {"promote": True, "reason": "beats v1", "champion_version": v1})
    assert retry["already"] and not retry["stale"]
    assert tags(client, model_name, v2)["decision"] == "promoted"
    assert tags(client, model_name, v2)["compared_with"] == str(v1)


def test_decided_data_versions(mlflow_server, model_name, register):
    """Item 7: the registry tells the DAG which data versions were already promoted or rejected."""
    client = MlflowClient(mlflow_server)
    v1, v2 = register("constant"), register("constant")
    for v, data in ((v1, "aaaa1111"), (v2, "bbbb2222")):
        client.set_model_version_tag(model_name, str(v), "data.version", data)
    assert versions.decided_for_data("aaaa1111") is None           # trained, not decided yet
    aliases.reject(v1, {"reason": "under the floors", "champion_version": None})
    assert versions.decided_for_data("aaaa1111") == {"version": v1, "decision": "rejected",
                                                      "reason": "under the floors"}
    # a stale decision settles nothing: the champion moved, that data deserves a new evaluation
    client.set_model_version_tag(model_name, str(v2), "decision", "stale")
    assert versions.decided_for_data("bbbb2222") is None
    assert versions.decided_for_data("cccc3333") is None


def test_manual_promote_refuses_a_model_that_cannot_serve(mlflow_server, model_name, logged_models,
                                                          trained, tmp_path, capsys):
    """Item 13: a person may overrule the policy, not the serving check (NaN outputs refused)."""
    import mlflow
    import torch

    ckpt = torch.load(trained["checkpoint"], map_location="cpu", weights_only=True)
    ckpt["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "model.pt")
    nan_version = tracking.register_checkpoint(tmp_path / "model.pt", _params(),   # into $XRAY_MODEL_NAME
                                               run_name="nan-weights")["version"]
    good = int(mlflow.register_model(logged_models["good"], model_name).version)

    assert loading.serving_check(good) == []
    problems = loading.serving_check(nan_version)
    assert problems and "non-finite" in problems[0]
    assert cli.main(["promote", str(nan_version), "--reason", "trust me"]) == 2
    assert "NOT promoted" in capsys.readouterr().out
    assert loading.champion_version() is None
    assert cli.main(["promote", str(good)]) == 0
    assert loading.champion_version() == good


def _params() -> dict:
    from pipeline.settings import config

    return config.load_params()


class SlowClient:
    """The real client, with a random pause after each read that returns the crashed holder's
    lock: it widens the window between "is it still the stale lock?" and "delete it", as a slow
    server or a descheduled process would (reads of live locks are not slowed). It also records
    whose lock each deletion removed: the crashed holder's, or a live one by someone else."""

    def __init__(self, client):
        self._client = client
        self.local = threading.local()       # .owner: the lock this thread holds
        self.broken, self.stolen = [], []

    def __getattr__(self, attr):
        return getattr(self._client, attr)

    def get_registered_model(self, name):
        model = self._client.get_registered_model(name)
        if (model.tags or {}).get("owner") == "crashed":
            time.sleep(random.random() * 1.0)
        return model

    def delete_registered_model(self, name):
        if name.startswith(aliases.LOCK_PREFIX) and ".break-" not in name:
            try:
                owner = self._client.get_registered_model(name).tags.get("owner")
            except Exception:  # noqa: BLE001 - already gone
                owner = None
            if owner == "crashed":
                self.broken.append(owner)
            elif owner is not None and owner != getattr(self.local, "owner", None):
                self.stolen.append(owner)
        return self._client.delete_registered_model(name)


def test_a_stale_lock_is_broken_by_one_waiter_only(mlflow_server, model_name):
    """Item 16: six waiters find a crashed holder's lock; one breaks it, and no waiter deletes the
    new lock of the one that got in (they enter one at a time)."""
    client = server.connect(mlflow_server)
    client.create_registered_model(aliases.lock_name(model_name), tags={"owner": "crashed"})
    slow = SlowClient(client)

    def on_enter(owner):
        slow.local.owner = owner
    done, overlaps, errors = contend(slow, model_name, hold_s=1.0, join_s=240, on_enter=on_enter,
                                     wait_s=180, stale_s=6.0)
    assert not errors and len(done) == 6, (errors, done)
    assert slow.stolen == [] and not overlaps, (slow.stolen, overlaps)
    assert slow.broken == ["crashed"]
    leftovers = [m.name for m in client.search_registered_models(f"name LIKE '{aliases.lock_name(model_name)}%'")]
    assert leftovers == []


def test_a_client_clock_ahead_does_not_break_a_live_lock(mlflow_server, model_name, register, monkeypatch):
    """Item 16 / issue 25 item 11: lock age is server time - server time (the lock model's creation
    and last_updated timestamps), never this host's clock: an hour ahead changes nothing."""
    v = register("constant")
    client = MlflowClient(mlflow_server)
    client.create_registered_model(aliases.lock_name(model_name), tags={"owner": "alive"})
    skewed = types.SimpleNamespace(time=lambda: time.time() + 3600, monotonic=time.monotonic,
                                   sleep=time.sleep, perf_counter=time.perf_counter)
    monkeypatch.setattr(aliases, "time", skewed)          # this host's wall clock is an hour ahead
    monkeypatch.setattr(aliases, "LOCK_STALE_S", 5.0)
    monkeypatch.setattr(aliases, "LOCK_WAIT_S", 8.0)
    # the live holder releases after 2 s: the waiter must wait for that, not break its lock
    release = threading.Timer(2.0, client.delete_registered_model, args=[aliases.lock_name(model_name)])
    release.start()
    start = time.monotonic()
    assert aliases.promote(v, {"reason": "skewed clock"}, force=True)["promoted"]
    release.join()
    assert 1.5 < time.monotonic() - start < 4.5
