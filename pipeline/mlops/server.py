"""The MLflow server and the registry's vocabulary: how to reach the server, the registered model's
name, its aliases, and the small helpers every mlops module shares.

Registry layout (one registered model, name = params registry.model_name or $XRAY_MODEL_NAME)
- every training run registers a new version and moves the alias `challenger` onto it;
- alias `champion` = the version that serves doctors; `previous_champion` = the one it replaced;
- each decided version carries tags: decision (promoted | rejected | stale | rolled_back),
  decision_reason (words), compared_with (champion version or "none"), eval_n, decided_at; the
  figures are metrics of its logged model (pipeline.mlops.versions).

Who calls what
- the DAG:      tracking.tracked_train -> candidates.evaluate_candidates -> policy.decide -> aliases.promote | reject
- Django:       loading.serve_alias() -> (ServedModel, ModelVersion), no torch; server.alias_version() to notice a change
- people:       python -m pipeline promote | rollback | status | history   (pipeline/cli.py)
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import urllib.error
import urllib.request

from pipeline.settings import config
from pipeline.settings.params import Params

CHAMPION = "champion"               # the aliases: spelled here only
CHALLENGER = "challenger"
PREVIOUS = "previous_champion"
FAST_PATH_TAG = "fast_path"  # version tag set by check_fast_path: "on" | "off"


class TrackingServerUnavailable(RuntimeError):
    """The MLflow tracking server does not answer (raised before any run is started)."""


class NoChampion(LookupError):
    """The registered model has no `champion` alias (yet)."""


class PromotionError(RuntimeError):
    """An alias change could not be applied (lock timeout, nothing to roll back, ...)."""


def tracking_uri() -> str:
    return config.tracking_uri()


def ui_url() -> str:
    """Base of the links people follow into the MLflow UI: $XRAY_MLFLOW_UI (the address a browser
    reaches), else "": links relative to the page, right on the UI's own pages (the registry's version
    page shows the model card) at whatever address the browser used. The tracking URI is no default:
    in the compose stack it is http://mlflow:5000, which no browser reaches."""
    return os.environ.get("XRAY_MLFLOW_UI", "").rstrip("/")


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


def connect(uri: str | None = None):
    """A client of `uri`, also made the process's MLflow URI (mlflow.register_model and runs use it)."""
    import mlflow

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return client_of(uri)


def client_of(uri: str):
    """A client of `uri` that leaves the process's MLflow URI alone (the site's registry poller: the
    process may talk to another server meanwhile)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def model_name(params: Params | None = None, name: str | None = None) -> str:
    if name:
        return name
    return config.model_name(params if params is not None else config.load_params())


def alias_version(client, name: str, alias: str) -> int | None:
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


def tag_version(client, name: str, version: int, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def model_id(mv) -> str | None:
    """The logged model behind a version (registry versions name it in `source`: models:/m-...)."""
    source = str(mv.source or "")
    return mv.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def jsonable(obj):
    """Plain JSON types only (XCom, tags): numpy scalars -> float, Paths -> str."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def fmt(value) -> str:
    return f"{value:.4f}" if finite(value) else str(value)

