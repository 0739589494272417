"""The model registry: which version serves (aliases), loading a version, the promotion lock,
alias moves (promote, reject, rollback) and status. MLflow server access lives here too.

Who calls what
- the DAG:      tracking.tracked_train -> candidates.evaluate_candidates -> policy.decide -> promote | reject
- Django:       load_champion() -> (Predictor, ModelVersion); champion_version() to notice a change
- people:       python -m pipeline promote | rollback | status   (pipeline/cli.py)

Registry layout (one registered model, name = params registry.model_name or $XRAY_MODEL_NAME)
- every training run registers a new version and moves the alias `challenger` onto it;
- alias `champion` = the version that serves doctors; `previous_champion` = the one it replaced;
- each decided version carries tags: decision (promoted | rejected | stale | rolled_back),
  decision_reason (words), compared_with (champion version or "none"), eval_n, decided_at; the
  figures are metrics of its logged model: test.<metric> (registration), challenger.<metric> and
  champion.<metric> (both scored now, on the same held-out images; log_version_scores).

Concurrency. Two promotions may race (a manual `promote` while the DAG promotes). Every alias
change (promote, rollback) runs under a registry-wide mutex: a registered model named
`locks.promotion.<name>` (lock_name), created with create_registered_model. Its name is the primary
key of the registry table, so creation is atomic in the backend database (SQLite or PostgreSQL):
exactly one process creates it, the others get RESOURCE_ALREADY_EXISTS and wait. The lock lives
outside the served model's name (no `<name>` prefix), so searches or grants by that name never meet
it. A lock older than LOCK_STALE_S on the server's clock (crashed holder) is broken; LOCK_STALE_S
must be shorter than LOCK_WAIT_S. Under the lock, a decision is applied only if the champion
it was computed against is still the champion (compare-and-set); otherwise it is "stale" and is
tagged and reported, not applied. Aliases are written previous_champion first, champion second, and
read back afterwards; readers never see `champion` on a half-registered version.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import random
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

from pipeline.settings import config
from pipeline.settings.params import Params

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
FAST_PATH_TAG = "fast_path"  # version tag set by check_fast_path: "on" | "off"
PREVIOUS = "previous_champion"
LOCK_PREFIX = "locks.promotion."
# The lease must be shorter than the wait, or a crashed holder's lock outlives every waiter. A live
# holder makes a dozen REST calls (seconds), far below the lease.
LOCK_STALE_S = float(os.environ.get("XRAY_PROMOTION_LOCK_STALE_S", 60))
LOCK_WAIT_S = float(os.environ.get("XRAY_PROMOTION_LOCK_WAIT_S", 120))
# the figures logged on a version's model (test.<key> at registration; challenger./champion.<key> at decision)
METRIC_KEYS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "threshold", "ece",
               "stress_mean_auc", "stress_worst_auc", "stress_worst_sensitivity", "stress_worst_specificity",
               "external_auc", "external_sensitivity", "external_specificity", "external_ece",
               "golden_auc", "golden_sensitivity", "golden_specificity", "golden_ece", "golden_n")


class TrackingServerUnavailable(RuntimeError):
    """The MLflow tracking server does not answer (raised before any run is started)."""


class NoChampion(LookupError):
    """The registered model has no `champion` alias (yet)."""


class PromotionError(RuntimeError):
    """An alias change could not be applied (lock timeout, nothing to roll back, ...)."""


# ----------------------------------------------------------------------------- connection
def tracking_uri() -> str:
    return config.tracking_uri()


def check_server(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast, naming the URI, when the tracking server does not answer /health.

    MLflow's own client retries a dead server for minutes (exponential backoff); this answers in
    `timeout` seconds. Non-HTTP URIs (file:, sqlite:) need no server and pass.
    """
    uri = (uri or tracking_uri()).rstrip("/")
    if not uri.startswith(("http://", "https://")):
        return uri
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as resp:
            if resp.status != 200:
                raise urllib.error.URLError(f"HTTP {resp.status}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingServerUnavailable(
            f"MLflow tracking server unreachable at {uri} ({reason}). Start it with `make mlflow` "
            f"or point MLFLOW_TRACKING_URI at a running server."
        ) from exc
    return uri


def _client(uri: str | None = None):
    import mlflow
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _name(params: Params | None = None, name: str | None = None) -> str:
    if name:
        return name
    return config.model_name(params if params is not None else config.load_params())


def _alias_version(client, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        # MLflow's auth app answers 403, not 404, for a model that does not exist yet (a non-admin
        # login such as the trainer, before its first registration): that is "no champion" too
        if exc.error_code == "PERMISSION_DENIED" and not client.search_registered_models(f"name = '{name}'"):
            return None
        raise


# ----------------------------------------------------------------------------- small helpers
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _jsonable(obj):
    """Plain JSON types only (XCom, tags): numpy scalars -> float, Paths -> str."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _fmt(value) -> str:
    return f"{value:.4f}" if _finite(value) else str(value)


# ----------------------------------------------------------------------------- tracking


# ----------------------------------------------------------------------------- loading models
def _cache_root() -> Path:
    return config.env_path("XRAY_MODEL_CACHE_DIR", config.REPO_ROOT / ".cache" / "models")


def download_version(version: int, name: str | None = None, client=None) -> Path:
    """Local directory of a registered version's pyfunc model (cached: versions are immutable).

    The cache key includes the tracking URI and the version's source (a unique logged-model id), so
    two servers with the same model name and version numbers never share an entry.
    """
    import mlflow

    client = client or _client()
    name = _name(name=name)
    mv = client.get_model_version(name, str(version))
    key = hashlib.sha1(f"{client.tracking_uri}|{mv.source}|{mv.run_id}".encode()).hexdigest()[:16]
    target = _cache_root() / f"{name}-v{mv.version}-{key}"
    if (target / "MLmodel").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}",
                                                         dst_path=str(tmp)))
        if not (local / "MLmodel").exists():
            found = next(local.rglob("MLmodel"), None)
            if found is None:
                raise FileNotFoundError(f"models:/{name}/{mv.version} has no MLmodel file")
            local = found.parent
        try:
            os.replace(local, target)          # atomic: concurrent loaders never see half a model
        except OSError:
            if not (target / "MLmodel").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def checkpoint_path(uri: str) -> Path:
    """model.pt of `models:/<name>@<alias>` or `models:/<name>/<version>`, through the same version
    cache as the site: the one way the CLI (--model), warm starts (model.init) and Django load a
    registered model."""
    from pipeline.mlops.pyfunc import checkpoint_in

    rest = uri.removeprefix("models:/")
    client = _client()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        version = _alias_version(client, name, alias)
        if version is None:
            raise NoChampion(f"{uri}: registered model '{name}' has no alias '{alias}' at {client.tracking_uri}")
    else:
        name, _, number = rest.rpartition("/")
        if not name or not number.isdigit():
            raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
        version = int(number)
    return checkpoint_in(download_version(version, name, client))


def load_version(version: int, name: str | None = None, device=None, tracking_uri: str | None = None,
                 fast: bool = False, threads: int = 0):
    """(Predictor, ModelVersion) of one registered version. fast: run it on the fast path
    (pipeline.inference.engine) when the version passed its agreement check; else float32 torch."""
    from pipeline.inference.predict import Predictor
    from pipeline.mlops.pyfunc import checkpoint_in, onnx_in

    client = _client(tracking_uri)
    name = _name(name=name)
    mv = client.get_model_version(name, str(version))
    local = download_version(int(mv.version), name, client)
    predictor = Predictor.from_checkpoint(checkpoint_in(local), device=device)
    tags = mv.tags or {}
    precision = tags.get(f"{FAST_PATH_TAG}.precision") or None
    onnx_file = onnx_in(local, int8=precision == "int8")
    if fast and tags.get(FAST_PATH_TAG) == "on" and onnx_file is not None:
        from pipeline.inference.engine import FastEngine

        predictor.engine = FastEngine(onnx_file, predictor.intensity, precision=precision, threads=threads)
    return predictor, mv


def load_champion(name: str | None = None, device=None, alias: str = CHAMPION, tracking_uri: str | None = None,
                  fast: bool = False, threads: int = 0):
    """(Predictor, ModelVersion) of the version holding `alias` (default champion; raises NoChampion).

    The files are downloaded once per version into $XRAY_MODEL_CACHE_DIR; later calls only ask the
    server which version holds the alias.
    """
    client = _client(tracking_uri)
    name = _name(name=name)
    version = _alias_version(client, name, alias)
    if version is None:
        raise NoChampion(f"registered model '{name}' has no '{alias}' alias at {client.tracking_uri}; "
                         f"train one (`python -m pipeline train --mlflow`) and promote it")
    return load_version(version, name, device=device, tracking_uri=client.tracking_uri, fast=fast, threads=threads)


def champion_version(name: str | None = None, tracking_uri: str | None = None) -> int | None:
    """Version number holding `champion` (None when there is none)."""
    return _alias_version(_client(tracking_uri), _name(name=name), CHAMPION)


# ----------------------------------------------------------------------------- evaluation + policy


# ----------------------------------------------------------------------------- alias changes
# --- hardening (issue 11 items 8, 13, 16): lock, idempotent promote, serving check -----------
def lock_name(name: str) -> str:
    """The promotion lock of registered model `name`: a name that does not start with `name`."""
    return f"{LOCK_PREFIX}{name}"


def _lock_age_ms(client, lock: str, owner: str):
    """(creation timestamp, age in ms) of the held lock, both on the MLflow server's clock: touching
    the lock's description makes the server stamp last_updated_timestamp with its own now. The
    client's clock never enters (a skewed host neither breaks a live lock nor keeps a dead one)."""
    held = client.update_registered_model(lock, description=f"promotion lock; last seen by {owner}")
    stamp = int(held.creation_timestamp or 0)
    return held, stamp, int(held.last_updated_timestamp or 0) - stamp


@contextmanager
def promotion_lock(client, name: str, wait_s: float | None = None, stale_s: float | None = None):
    """Registry-wide mutex: an atomically created registered model `lock_name(name)`.

    A lease: a lock whose age on the server's clock (_lock_age_ms) reaches stale_s is broken, so a
    crashed holder's lock is broken by the first waiter that sees it that old. stale_s < wait_s is
    required: otherwise waiters give up before a dead lock can be broken.
    Breaking is serialised by a second atomic create, `<lock>.break-<creation ms>`: without it two
    waiters could both see the stale lock, one break it and take a new one, and the other then
    delete that new lock and enter too.
    """
    from mlflow.exceptions import MlflowException

    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    stale_s = LOCK_STALE_S if stale_s is None else stale_s
    if stale_s >= wait_s:
        raise ValueError(f"promotion lock: stale_s ({stale_s:.0f}s, XRAY_PROMOTION_LOCK_STALE_S) must be "
                         f"shorter than wait_s ({wait_s:.0f}s, XRAY_PROMOTION_LOCK_WAIT_S)")
    lock = lock_name(name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(lock, tags={"owner": owner},
                                           description="transient: held while an alias of "
                                                       f"'{name}' changes (pipeline.mlops.registry)")
            break
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                # the server's create hit the unique key, then found the holder's lock already
                # deleted while composing "already exists": free again, try at once
                if time.monotonic() > deadline:
                    raise PromotionError(f"promotion lock {lock}: still contended after {wait_s:.0f}s") from exc
                continue
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held, stamp, age_ms = _lock_age_ms(client, lock, owner)
        except MlflowException:
            continue  # released between our create and our read: try again at once
        if age_ms >= stale_s * 1000:
            _break_stale_lock(client, lock, stamp, held.tags.get("owner"), age_ms / 1000)
            continue
        if time.monotonic() > deadline:
            raise PromotionError(f"promotion lock {lock} held by {held.tags.get('owner')} for {age_ms / 1000:.0f}s "
                                 f"(server clock); gave up after {wait_s:.0f}s")
        time.sleep(0.1 + random.random() * 0.3)
    try:
        yield owner
    finally:
        try:
            if client.get_registered_model(lock).tags.get("owner", owner) == owner:
                client.delete_registered_model(lock)
            else:
                log.warning("promotion lock %s was broken as stale while held by %s", lock, owner)
        except MlflowException as exc:  # already broken as stale and released by someone else
            log.warning("could not release %s: %s", lock, exc)


def _break_stale_lock(client, lock: str, stamp: int, holder: str | None, age: float) -> None:
    """Delete the lock created at `stamp` if it is still that one; one breaker per stale lock."""
    from mlflow.exceptions import MlflowException

    marker = f"{lock}.break-{stamp}"
    try:
        client.create_registered_model(marker, description="transient: breaking a stale promotion lock")
    except MlflowException:
        return   # another waiter is breaking this lock (or has): go back to waiting for it
    try:
        if client.get_registered_model(lock).creation_timestamp == stamp:
            log.warning("breaking stale promotion lock %s held by %s (%.0fs old, server clock)", lock, holder, age)
            client.delete_registered_model(lock)
    except MlflowException:
        pass   # already released by its holder
    finally:
        # Late breakers of this stamp get the marker only after the lock they saw is gone: their
        # re-check finds a newer creation time (or nothing) and they delete nothing.
        try:
            client.delete_registered_model(marker)
        except MlflowException:
            pass


def serving_check(version: int, name: str | None = None) -> list[str]:
    """What would stop `version` from serving: it must load, and answer a finite probability in
    [0, 1] and a finite heat map on warm-up images (the web app refuses the same). [] = fine."""
    import numpy as np
    from PIL import Image

    try:
        predictor, _ = load_version(int(version), _name(name=name), device="cpu")
        size = int(predictor.image_size)
        ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
        probs = predictor.probabilities(np.stack([np.zeros((size, size), np.uint8), ramp]))
    except Exception as exc:  # noqa: BLE001 - any failure to load or run is the answer
        return [f"v{version} does not load or run: {type(exc).__name__}: {exc}"[:500]]
    values = [float(p) for p in probs]
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in values):
        return [f"v{version} answers non-finite or out-of-range probabilities {values}"]
    try:
        prediction, cam = predictor.gradcam(Image.fromarray(ramp))
    except Exception as exc:  # noqa: BLE001
        return [f"v{version} fails to draw a heat map: {type(exc).__name__}: {exc}"[:500]]
    if not np.isfinite(np.asarray(cam, dtype=np.float64)).all():
        return [f"v{version} gives a non-finite heat map"]
    return []


# Decisions that settle a data version: the DAG does not retrain on it again unless forced. "stale"
# is not one (the champion moved before the decision applied: that data deserves a new evaluation).
FINAL_DECISIONS = ("promoted", "promoted_manually", "rejected", "rolled_back")


def decided_for_data(data_version: str, name: str | None = None) -> dict | None:
    """The newest version trained on `data_version` (its `data.version` tag) whose decision is
    final: {"version", "decision", "reason"}; None when that data has not been decided yet."""
    client = _client(check_server())
    name = _name(name=name)
    found = []
    for mv in client.search_model_versions(f"name='{name}'"):   # tags filtered here: any characters
        tags = mv.tags or {}
        if tags.get("data.version") == data_version and tags.get("decision") in FINAL_DECISIONS:
            found.append((int(mv.version), tags))
    if not found:
        return None
    version, tags = max(found, key=lambda item: item[0])
    return {"version": version, "decision": tags["decision"], "reason": tags.get("decision_reason", "")}


# --- end of hardening block ------------------------------------------------------------------


def _decision_tags(decision: dict, verdict: str) -> dict[str, str]:
    tags = {"decision": verdict, "decision_reason": str(decision.get("reason", ""))[:5000],
            "decided_at": str(decision.get("decided_at") or _now()),
            "compared_with": str(decision.get("champion_version") or "none")}
    if decision.get("n_test") is not None:
        tags["eval_n"] = str(decision["n_test"])
    for key, c in (decision.get("comparison") or {}).items():
        if c:
            tags[f"compare.{key}.auc_delta"] = _fmt(c["delta"])
            tags[f"compare.{key}.interval"] = f"[{_fmt(c['low'])}, {_fmt(c['high'])}]"
    return tags


def _tag_version(client, name: str, version: int, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def _model_id(mv) -> str | None:
    """The logged model behind a version (registry versions name it in `source`: models:/m-...)."""
    source = str(mv.source or "")
    return mv.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)


def log_version_scores(client, name: str, version: int, scores: dict) -> None:
    """Numbers about a version go on its logged model as metrics (MLflow 3: the model page shows
    them, search_logged_models filters on them), in its training run, never as string tags."""
    from mlflow.entities import Metric

    mv = client.get_model_version(name, str(version))
    now = int(time.time() * 1000)
    model_id = _model_id(mv)
    metrics = [Metric(k, float(v), now, 0, model_id=model_id) for k, v in scores.items() if _finite(v)]
    if model_id and mv.run_id and metrics:
        client.log_batch(mv.run_id, metrics=metrics)


def version_scores(client, name: str, version: int) -> dict[str, float]:
    """The metrics on a version's logged model (test.<key> from registration, challenger.<key> and
    champion.<key> from its decision); the newest value of each."""
    model_id = _model_id(client.get_model_version(name, str(version)))
    if not model_id:
        return {}
    newest = {}
    for m in sorted(client.get_logged_model(model_id).metrics or [], key=lambda m: m.timestamp):
        newest[m.key] = m.value
    return newest


def _log_decision_scores(client, name: str, version: int, decision: dict) -> None:
    """The figures the decision compared: challenger.<key> and champion.<key> on the challenger."""
    log_version_scores(client, name, version, {f"{role}.{key}": value for role in ("challenger", "champion")
                                               for key, value in (decision.get(f"{role}_metrics") or {}).items()
                                               if key in METRIC_KEYS})


DECISION_HEADING = "**Promotion decision.**"


def _card_decision(client, name: str, version: int, verdict: str, reason: str) -> None:
    """Write the decision into the version's model card (its description), replacing an older one."""
    card = client.get_model_version(name, str(version)).description or ""
    card = card.split(DECISION_HEADING)[0].rstrip()
    client.update_model_version(name, str(version), description=f"{card}\n\n{DECISION_HEADING} {verdict}: {reason}")


def promote(version: int, decision: dict | None = None, *, name: str | None = None, force: bool = False) -> dict:
    """Make `version` the champion; the old champion becomes previous_champion.

    `decision` (from decide()) is applied only if the champion it compared against is still the
    champion (else the result is {"promoted": False, "stale": True}); force=True skips that check
    (a person promoting by hand).
    """
    client = _client(check_server())
    name = _name(name=name)
    version = int(version)
    decision = dict(decision or {"reason": "manual promotion", "champion_version": None})
    client.get_model_version(name, str(version))  # fails clearly if the version does not exist
    with promotion_lock(client, name):
        current = _alias_version(client, name, CHAMPION)
        if current == version:
            # Checked before the stale test, so promote is idempotent: an Airflow retry after the
            # first try moved the alias finds its own work done (not a "stale" decision).
            if not str(client.get_model_version(name, str(version)).tags.get("decision", "")).startswith("promoted"):
                _tag_version(client, name, version, _decision_tags(decision, "promoted" if not force
                                                                 else "promoted_manually"))
                _log_decision_scores(client, name, version, decision)
            return {"promoted": False, "already": True, "stale": False, "version": version,
                    "champion": current, "reason": f"v{version} is already the champion"}
        expected = decision.get("champion_version")
        if not force and (None if expected is None else int(expected)) != current:
            reason = (f"stale decision: it compared v{version} with champion "
                      f"{'v' + str(expected) if expected else 'none'}, but the champion is now "
                      f"{'v' + str(current) if current else 'none'}; evaluate again")
            _tag_version(client, name, version, {**_decision_tags(decision, "stale"), "decision_reason": reason})
            _log_decision_scores(client, name, version, decision)
            return {"promoted": False, "stale": True, "version": version, "champion": current, "reason": reason}
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS, str(current))
        client.set_registered_model_alias(name, CHAMPION, str(version))
        tags = _decision_tags(decision, "promoted" if not force else "promoted_manually")
        tags["promoted_over"] = str(current) if current is not None else "none"
        _tag_version(client, name, version, tags)
        _log_decision_scores(client, name, version, decision)
        _card_decision(client, name, version, tags["decision"], str(decision.get("reason", "")))
        if current is not None:
            _tag_version(client, name, current, {"replaced_by": str(version), "replaced_at": _now()})
        after = _alias_version(client, name, CHAMPION)
        if after != version:  # only possible if someone bypassed the lock
            raise PromotionError(f"champion alias reads v{after} right after setting v{version}")
    return {"promoted": True, "stale": False, "version": version, "champion": version,
            "previous_champion": current, "reason": decision.get("reason", "")}


def reject(version: int, decision: dict, *, name: str | None = None) -> dict:
    """Record a non-promotion on the version (it keeps the `challenger` alias)."""
    client = _client(check_server())
    name = _name(name=name)
    _tag_version(client, name, int(version), _decision_tags(decision, "rejected"))
    _log_decision_scores(client, name, int(version), decision)
    _card_decision(client, name, int(version), "rejected", str(decision.get("reason", "")))
    return {"promoted": False, "version": int(version), "champion": _alias_version(client, name, CHAMPION),
            "reason": decision.get("reason", "")}


def rollback(*, name: str | None = None, reason: str = "manual rollback") -> dict:
    """Champion <- previous_champion. previous_champion <- the version that one had replaced, so
    repeated rollbacks walk back through the promotion history."""
    from mlflow.exceptions import MlflowException

    client = _client(check_server())
    name = _name(name=name)
    with promotion_lock(client, name):
        current = _alias_version(client, name, CHAMPION)
        previous = _alias_version(client, name, PREVIOUS)
        if previous is None:
            raise PromotionError(f"'{name}' has no '{PREVIOUS}' alias: nothing to roll back to")
        client.set_registered_model_alias(name, CHAMPION, str(previous))
        before = client.get_model_version(name, str(previous)).tags.get("promoted_over", "none")
        if before.isdigit() and int(before) not in (previous, current):
            client.set_registered_model_alias(name, PREVIOUS, before)
        else:
            try:
                client.delete_registered_model_alias(name, PREVIOUS)
            except MlflowException:
                pass
        if current is not None:
            _tag_version(client, name, current, {"decision": "rolled_back", "decision_reason": reason,
                                                 "decided_at": _now(), "rolled_back_to": str(previous)})
        _tag_version(client, name, previous, {"restored_at": _now(), "restored_from": str(current)})
    return {"champion": previous, "rolled_back_from": current,
            "previous_champion": _alias_version(client, name, PREVIOUS), "reason": reason}


# ----------------------------------------------------------------------------- status
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
    client = _client(check_server())
    name = _name(name=name)
    versions = client.search_model_versions(f"name='{name}'", max_results=200)
    versions = sorted(versions, key=lambda mv: int(mv.version), reverse=True)[:limit]
    aliases: dict[int, list[str]] = {}
    for alias, v in (client.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(int(v), []).append(alias)
    return _jsonable({
        "tracking_uri": client.tracking_uri, "model_name": name,
        "champion": _describe(client, name, _alias_version(client, name, CHAMPION)),
        "previous_champion": _describe(client, name, _alias_version(client, name, PREVIOUS)),
        "challenger": _describe(client, name, _alias_version(client, name, CHALLENGER)),
        "versions": [{"version": int(mv.version), "aliases": sorted(aliases.get(int(mv.version), [])),
                      "decision": (mv.tags or {}).get("decision", "undecided"),
                      "reason": (mv.tags or {}).get("decision_reason", "")} for mv in versions],
    })


# ----------------------------------------------------------------------------- CLI


