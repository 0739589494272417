"""Champion/challenger against a real registry: promotion, rejection, floors, rollback, races, CLI."""
from __future__ import annotations

import itertools
import json
import threading

import pytest
from mlflow import MlflowClient
from registry_helpers import contend

from pipeline.mlops import aliases, candidates, server, loading, policy, versions
from pipeline import cli


def held(client, name) -> dict:
    return {k: int(v) for k, v in client.get_registered_model(name).aliases.items()}


def tags(client, name, version) -> dict:
    return client.get_model_version(name, str(version)).tags


def evaluate_and_apply(version, params, data):
    scores = candidates.evaluate_candidates(version, params, data)
    decision = policy.decide(scores, params)
    result = (aliases.promote(version, decision) if decision["promote"] else aliases.reject(version, decision))
    return scores, decision, result


def test_better_challenger_promoted_worse_rejected(mlflow_server, model_name, register, trained,
                                                   constant_checkpoint, loose_params, small_dataset):
    client = MlflowClient(mlflow_server)
    # v1: a useless model (weights zeroed, AUC 0.5) becomes the first champion (floors off)
    v1 = register("constant")
    scores, d1, r1 = evaluate_and_apply(v1, loose_params, small_dataset)
    assert scores["champion"] is None and scores["challenger"]["metrics"]["auc"] == pytest.approx(0.5)
    assert d1["promote"] and r1["promoted"] and "no champion yet" in d1["reason"]
    assert held(client, model_name) == {"champion": v1, "challenger": v1}

    # v2: the trained model beats it, both scored now on the same held-out images
    v2 = register("good")
    scores, d2, r2 = evaluate_and_apply(v2, loose_params, small_dataset)
    assert scores["champion"]["version"] == v1
    assert scores["challenger"]["metrics"]["n"] == scores["champion"]["metrics"]["n"] == scores["n_test"]
    assert scores["challenger"]["metrics"]["auc"] == pytest.approx(trained["metrics"]["auc"])  # same split
    assert d2["promote"] and r2 == {**r2, "promoted": True, "previous_champion": v1}
    assert held(client, model_name) == {"champion": v2, "previous_champion": v1, "challenger": v2}
    t2 = tags(client, model_name, v2)
    assert t2["decision"] == "promoted" and t2["compared_with"] == str(v1) and t2["promoted_over"] == str(v1)
    s2 = versions.version_scores(client, model_name, v2)   # figures: metrics of the logged model, not tags
    assert s2["challenger.auc"] == pytest.approx(trained["metrics"]["auc"], abs=1e-9)
    assert s2["champion.auc"] == pytest.approx(0.5) and t2["eval_n"] == str(scores["n_test"])
    assert not any(k.startswith(("challenger.", "champion.")) for k in t2)
    assert tags(client, model_name, v1)["replaced_by"] == str(v2)

    # v3: the degraded model again -> rejected with the reason in words; keeps `challenger` only
    v3 = register("constant")
    _, d3, r3 = evaluate_and_apply(v3, loose_params, small_dataset)
    assert not d3["promote"] and not r3["promoted"]
    t3 = tags(client, model_name, v3)
    assert t3["decision"] == "rejected"
    assert ("significantly worse" in t3["decision_reason"] or "not shown non-inferior" in t3["decision_reason"])
    assert f"champion v{v2}" in t3["decision_reason"] and "held-out" in t3["decision_reason"]
    assert "compare.test.auc_delta" in t3 and float(t3["compare.test.auc_delta"]) < 0
    card = client.get_model_version(model_name, str(v3)).description
    assert "**Promotion decision.** rejected: challenger v" in card   # the card (description) says why
    s3 = versions.version_scores(client, model_name, v3)
    assert s3["challenger.auc"] == pytest.approx(0.5) and s3["champion.auc"] > 0.6
    assert held(client, model_name) == {"champion": v2, "previous_champion": v1, "challenger": v3}

    # serving follows the alias: load_champion gives the trained model
    predictor, mv = loading.load_champion()
    assert int(mv.version) == v2 and predictor.threshold == pytest.approx(trained["metrics"]["threshold"])
    assert loading.champion_version() == v2
    assert loading.load_champion(alias="challenger", tracking_uri=mlflow_server)[1].version == str(v3)


def test_floors_reject_even_the_first_model(mlflow_server, model_name, register, constant_checkpoint,
                                            reg_params, small_dataset):
    client = MlflowClient(mlflow_server)
    v = register("constant")
    _, decision, result = evaluate_and_apply(v, reg_params, small_dataset)   # params.yaml floors
    assert not decision["promote"] and not result["promoted"]
    reason = tags(client, model_name, v)["decision_reason"]
    assert "under the floors" in reason and "auc 0.5000 < floor 0.9000" in reason
    assert "worst-shift auc 0.5000 < floor 0.8500" in reason   # and under shift too
    assert "champion" not in held(client, model_name)
    with pytest.raises(server.NoChampion, match=model_name):
        loading.load_champion()


def test_rollback_walks_back_the_promotion_history(mlflow_server, model_name, register, trained,
                                                   constant_checkpoint):
    client = MlflowClient(mlflow_server)
    v1, v2, v3 = (register(k) for k in ("constant", "good", "constant"))
    for v in (v1, v2, v3):
        assert aliases.promote(v, {"reason": f"test {v}"}, force=True)["promoted"]
    assert held(client, model_name)["champion"] == v3 and held(client, model_name)["previous_champion"] == v2

    r = aliases.rollback(reason="v3 misbehaves")
    assert r == {"champion": v2, "rolled_back_from": v3, "previous_champion": v1, "reason": "v3 misbehaves"}
    assert tags(client, model_name, v3)["decision"] == "rolled_back"
    assert tags(client, model_name, v3)["decision_reason"] == "v3 misbehaves"
    assert loading.load_champion()[1].version == str(v2)

    r = aliases.rollback()
    assert r["champion"] == v1 and r["previous_champion"] is None
    assert held(client, model_name) == {"champion": v1, "challenger": v3}
    with pytest.raises(server.PromotionError, match="nothing to roll back"):
        aliases.rollback()


def test_stale_decision_is_not_applied(mlflow_server, model_name, register, trained, constant_checkpoint):
    client = MlflowClient(mlflow_server)
    v1, v2 = register("constant"), register("good")
    decision_vs_nothing = {"promote": True, "reason": "no champion yet", "champion_version": None}
    assert aliases.promote(v1, decision_vs_nothing)["promoted"]
    # v2's decision was computed when there was no champion: v1 has become champion since
    result = aliases.promote(v2, decision_vs_nothing)
    assert result["stale"] and not result["promoted"] and "evaluate again" in result["reason"]
    assert held(client, model_name)["champion"] == v1
    assert tags(client, model_name, v2)["decision"] == "stale"


def test_racing_promotions_end_on_one_consistent_version(mlflow_server, model_name, register, trained,
                                                         constant_checkpoint):
    client = MlflowClient(mlflow_server)
    c = register("constant")
    aliases.promote(c, {"reason": "base"}, force=True)
    racers = [register("good") for _ in range(4)]

    def race(fn):
        results, errors = {}, []
        barrier = threading.Barrier(len(racers))

        def worker(v):
            try:
                barrier.wait(timeout=60)
                results[v] = fn(v)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=worker, args=(v,)) for v in racers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert not errors, errors
        return results

    # 1. four DAG-style decisions, all computed against champion c: exactly one may win
    results = race(lambda v: aliases.promote(v, {"promote": True, "reason": f"race {v}", "champion_version": c}))
    winners = [v for v, r in results.items() if r["promoted"]]
    assert len(winners) == 1, results
    assert all(r["stale"] for v, r in results.items() if v != winners[0])
    assert held(client, model_name)["champion"] == winners[0]
    assert held(client, model_name)["previous_champion"] == c
    assert tags(client, model_name, winners[0])["promoted_over"] == str(c)

    # 2. four people forcing promotions at once: they serialize; the chain stays consistent
    results = race(lambda v: aliases.promote(v, {"reason": f"force {v}"}, force=True))
    final = held(client, model_name)
    assert final["champion"] in racers
    chain_prev = tags(client, model_name, final["champion"])["promoted_over"]
    assert str(final["previous_champion"]) == chain_prev
    # serialized = the promotions form one chain: some order of them in which each replaced the
    # champion the previous one installed, from the phase-1 winner to the final champion
    edges = [(r["previous_champion"], v) for v, r in results.items() if r["promoted"]]
    assert any(all(a[1] == b[0] for a, b in zip(order, order[1:]))
               and order[0][0] == winners[0] and order[-1][1] == final["champion"]
               for order in itertools.permutations(edges)), edges
    assert all(r["champion"] == v for v, r in results.items() if not r["promoted"])   # was already champion
    assert client.search_registered_models(f"name = '{aliases.lock_name(model_name)}'") == []


def test_stale_lock_of_a_crashed_holder_is_broken(mlflow_server, model_name, register, constant_checkpoint,
                                                  monkeypatch):
    client = MlflowClient(mlflow_server)
    v = register("constant")
    client.create_registered_model(aliases.lock_name(model_name), tags={"owner": "crashed"})
    # the lease (LOCK_STALE_S) is shorter than the wait: the waiter breaks the crashed holder's lock
    monkeypatch.setattr(aliases, "LOCK_STALE_S", 1.5)
    monkeypatch.setattr(aliases, "LOCK_WAIT_S", 10.0)
    assert aliases.promote(v, {"reason": "after crash"}, force=True)["promoted"]
    assert client.search_registered_models(f"name = '{aliases.lock_name(model_name)}'") == []


def test_cli_promote_status_rollback(mlflow_server, model_name, register, trained, constant_checkpoint, capsys):
    v1, v2 = register("constant"), register("good")
    assert cli.main(["promote", str(v1), "--reason", "first by hand"]) == 0
    assert cli.main(["promote", str(v2)]) == 0
    capsys.readouterr()
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"champion           v{v2}" in out and f"previous_champion  v{v1}" in out
    assert "promoted_manually" in out
    assert cli.main(["rollback"]) == 0
    assert f"champion is now v{v1}" in capsys.readouterr().out
    st = versions.status()
    assert st["champion"]["version"] == v1 and st["champion"]["reason"].startswith("first by hand")
    assert {v["version"]: v["decision"] for v in st["versions"]}[v2] == "rolled_back"
    json.dumps(st)


def test_promotion_lock_is_mutually_exclusive(mlflow_server, model_name):
    """Six processes' worth of contenders (threads, each its own HTTP calls) never overlap inside."""
    client = server.connect(mlflow_server)
    done, overlaps, errors = contend(client, model_name, rounds=4)
    assert not errors and not overlaps and len(done) == 24
    assert client.search_registered_models(f"name = '{aliases.lock_name(model_name)}'") == []
