"""What the registry knows about its versions: the figures logged on each, the decisions taken on a
data version, and the status (which version serves, why, and the recent ones)."""
from __future__ import annotations

import datetime as _dt
import time

from pipeline.mlops.server import (CHALLENGER, CHAMPION, PREVIOUS, alias_version, check_server, connect, finite,
                                   jsonable, model_id, model_name)

METRIC_KEYS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "threshold", "ece",
               "stress_mean_auc", "stress_worst_auc", "stress_worst_sensitivity", "stress_worst_specificity",
               "external_auc", "external_sensitivity", "external_specificity", "external_ece",
               "golden_auc", "golden_sensitivity", "golden_specificity", "golden_ece", "golden_n")


FINAL_DECISIONS = ("promoted", "promoted_manually", "rejected", "rolled_back")


def decided_for_data(data_version: str, name: str | None = None) -> dict | None:
    """The newest version trained on `data_version` (its `data.version` tag) whose decision is
    final: {"version", "decision", "reason"}; None when that data has not been decided yet."""
    client = connect(check_server())
    name = model_name(name=name)
    found = []
    for mv in client.search_model_versions(f"name='{name}'"):   # tags filtered here: any characters
        tags = mv.tags or {}
        if tags.get("data.version") == data_version and tags.get("decision") in FINAL_DECISIONS:
            found.append((int(mv.version), tags))
    if not found:
        return None
    version, tags = max(found, key=lambda item: item[0])
    return {"version": version, "decision": tags["decision"], "reason": tags.get("decision_reason", "")}


def log_version_scores(client, name: str, version: int, scores: dict) -> None:
    """Numbers about a version go on its logged model as metrics (MLflow 3: the model page shows
    them, search_logged_models filters on them), in its training run, never as string tags."""
    from mlflow.entities import Metric

    mv = client.get_model_version(name, str(version))
    stamp = int(time.time() * 1000)
    logged = model_id(mv)
    metrics = [Metric(k, float(v), stamp, 0, model_id=logged) for k, v in scores.items() if finite(v)]
    if logged and mv.run_id and metrics:
        client.log_batch(mv.run_id, metrics=metrics)


def version_scores(client, name: str, version: int) -> dict[str, float]:
    """The metrics on a version's logged model (test.<key> from registration, challenger.<key> and
    champion.<key> from its decision); the newest value of each."""
    logged = model_id(client.get_model_version(name, str(version)))
    if not logged:
        return {}
    newest = {}
    for m in sorted(client.get_logged_model(logged).metrics or [], key=lambda m: m.timestamp):
        newest[m.key] = m.value
    return newest


def _describe(client, name: str, version: int | None) -> dict | None:
    if version is None:
        return None
    mv = client.get_model_version(name, str(version))
    t = mv.tags or {}
    return {"version": int(mv.version), "run_id": mv.run_id, "created": _dt.datetime.fromtimestamp(
                mv.creation_timestamp / 1000, _dt.timezone.utc).replace(microsecond=0).isoformat(),
            "aliases": list(getattr(mv, "aliases", []) or []),
            "decision": t.get("decision"), "reason": t.get("decision_reason"),
            "data_version": t.get("data.version"),
            "scores": version_scores(client, name, int(mv.version))}


def status(name: str | None = None, limit: int = 10) -> dict:
    """Which version serves, why, and the recent versions with their decisions."""
    client = connect(check_server())
    name = model_name(name=name)
    versions = client.search_model_versions(f"name='{name}'", max_results=200)
    versions = sorted(versions, key=lambda mv: int(mv.version), reverse=True)[:limit]
    aliases: dict[int, list[str]] = {}
    for alias, v in (client.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(int(v), []).append(alias)
    return jsonable({
        "tracking_uri": client.tracking_uri, "model_name": name,
        **{alias: _describe(client, name, alias_version(client, name, alias))
           for alias in (CHAMPION, PREVIOUS, CHALLENGER)},
        "versions": [{"version": int(mv.version), "aliases": sorted(aliases.get(int(mv.version), [])),
                      "decision": (mv.tags or {}).get("decision", "undecided"),
                      "reason": (mv.tags or {}).get("decision_reason", "")} for mv in versions],
    })

