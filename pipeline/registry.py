"""MLflow tracking, the model registry, and champion/challenger promotion.

Who calls what
- the DAG:      tracked_train -> evaluate_candidates -> decide -> promote | reject
- Django:       load_champion() -> (Predictor, ModelVersion); champion_version() to notice a change
- people:       python -m pipeline promote | rollback | status   (cli_promote, cli_rollback, cli_status)

Registry layout (one registered model, name = params registry.model_name or $XRAY_MODEL_NAME)
- every training run registers a new version and moves the alias `challenger` onto it;
- alias `champion` = the version that serves doctors; `previous_champion` = the one it replaced;
- each decided version carries tags: decision (promoted | rejected | stale | rolled_back),
  decision_reason (words), compared_with (champion version or "none"), challenger.<metric> and
  champion.<metric> (both scored now, on the same held-out images), eval_n, decided_at.

Concurrency. Two promotions may race (a manual `promote` while the DAG promotes). Every alias
change (promote, rollback) runs under a registry-wide mutex: a registered model named
`<name>.promotion-lock`, created with create_registered_model. Its name is the primary key of the
registry table, so creation is atomic in the backend database (SQLite or PostgreSQL): exactly one
process creates it, the others get RESOURCE_ALREADY_EXISTS and wait. A lock older than
LOCK_STALE_S (crashed holder) is broken. Under the lock, a decision is applied only if the champion
it was computed against is still the champion (compare-and-set); otherwise it is "stale" and is
tagged and reported, not applied. Aliases are written previous_champion first, champion second, and
read back afterwards; readers never see `champion` on a half-registered version.
"""
from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import io
import json
import logging
import math
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline import config

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
FAST_PATH_TAG = "fast_path"  # version tag set by check_fast_path: "on" | "off"
PREVIOUS = "previous_champion"
LOCK_SUFFIX = ".promotion-lock"
LOCK_STALE_S = float(os.environ.get("XRAY_PROMOTION_LOCK_STALE_S", 300))   # a holder never takes this long
LOCK_WAIT_S = float(os.environ.get("XRAY_PROMOTION_LOCK_WAIT_S", 120))
METRIC_KEYS = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "threshold", "ece",
               "stress_mean_auc", "stress_worst_auc", "stress_worst_sensitivity", "stress_worst_specificity",
               "external_auc", "external_sensitivity", "external_specificity", "external_ece")
MODEL_ARTIFACT = "model"


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


def _name(params: dict | None = None, name: str | None = None) -> str:
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
        raise


# ----------------------------------------------------------------------------- small helpers
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(config.REPO_ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else ""
        if not commit:
            return "none"
        dirty = subprocess.run(["git", "-C", str(config.REPO_ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _jsonable(obj):
    """Plain JSON types only (XCom, tags): numpy scalars -> float, Paths -> str."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _fmt(value) -> str:
    return f"{value:.4f}" if _finite(value) else str(value)


# ----------------------------------------------------------------------------- tracking
def _run_name(data_version: str | None, trigger: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M")
    data = f"data-{data_version[:8]}" if data_version else "data-local"
    return f"{stamp}_{data}_{trigger}"


def _example_bytes(data_root: Path, image_size: int) -> bytes | None:
    """A small real X-ray from the data (re-encoded PNG at model size) as the input example."""
    from PIL import Image

    from pipeline.preprocess import load_image, to_array

    for pattern in ("*.jpeg", "*.jpg", "*.png"):
        for path in sorted(Path(data_root).rglob(pattern))[:5]:
            try:
                arr = to_array(load_image(path), image_size)
            except Exception:  # noqa: BLE001 - any unusable file: try the next one
                continue
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            return buf.getvalue()
    return None


def _dataset_input(data_root: Path, out_dir: Path, digest: str, name: str):
    """An MLflow dataset describing the images used (one row per image: path, label, split)."""
    import mlflow.data
    import pandas as pd

    from pipeline.data import patient_id

    rows = []
    split_file = Path(out_dir) / "split.json"
    if split_file.exists():
        try:
            split = json.loads(split_file.read_text())
        except ValueError:
            split = {}
        for split_name in ("train", "val", "test"):
            for item in split.get(split_name) or []:
                path = Path(str(item))
                label = path.parent.name.upper() if path.parent.name.upper() in config.CLASSES else None
                rows.append({"path": str(path), "label": label, "patient": patient_id(path.name),
                             "split": split_name})
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():   # "source can be interpreted in multiple ways": it is a local folder
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(data_root))
    if rows:
        return mlflow.data.from_pandas(pd.DataFrame(rows), source=source, targets="label", name=name,
                                       digest=digest[:36])
    return MetaDataset(source=source, name=name, digest=digest[:36])


def _validation_arrays(data_root: Path | None, image_size: int, n: int = 32):
    """(uint8 [n, S, S], where from): n real X-rays spread over the data, else a synthetic set."""
    import numpy as np

    from pipeline.preprocess import load_array

    files = sorted(Path(data_root).rglob("*.jpeg")) if data_root else []
    arrays = []
    for path in files[::max(1, len(files) // n)]:
        try:
            arrays.append(load_array(path, image_size))
        except Exception:  # noqa: BLE001 - an unusable file: the next one
            continue
        if len(arrays) == n:
            break
    if arrays:
        return np.stack(arrays), f"{len(arrays)} real X-rays of {data_root}"
    rng = np.random.default_rng(0)  # no data given (imports, benchmarks): textured grey images
    ramp = np.linspace(0, 255, image_size)[None, :, None]
    return np.clip(ramp + rng.normal(0, 40, (n, image_size, image_size)), 0, 255).astype(np.uint8), "synthetic"


def _export_onnx(checkpoint: Path, out_dir: Path, data_root: Path | None) -> tuple[Path, dict[str, str]]:
    """The checkpoint's ONNX export, validated by ONNX Runtime (raises onnx_export.OnnxMismatch)."""
    import mlflow

    from pipeline import onnx_export
    from pipeline.predict import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    path = onnx_export.export(predictor, out_dir / "model.onnx")
    arrays, source = _validation_arrays(data_root, predictor.image_size)
    report = onnx_export.validate(path, predictor, arrays)
    mlflow.log_dict({**report, "images": source}, "onnx/validation.json")
    return path, {"onnx.max_abs_logit_diff": f"{report['max_abs_logit_diff']:.1e}", "onnx.validated_on": source}


def _register(client, name: str, checkpoint: Path, run_id: str, example: bytes | None,
              version_tags: dict[str, str], data_root: Path | None = None) -> Any:
    """Log the pyfunc (with its validated ONNX export) under the active run, register it as a new
    version, alias it challenger."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.pyfunc_model import log_pyfunc

    try:
        client.create_registered_model(name, description=(
            "ResNet18 chest X-ray pneumonia classifier (pyfunc: raw image bytes -> probability, "
            "label, threshold). Alias `champion` serves doctors; `challenger` is the newest "
            "candidate; `previous_champion` is what a rollback restores."))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    with tempfile.TemporaryDirectory(prefix="xray-onnx-") as tmp:
        onnx_file, onnx_tags = _export_onnx(checkpoint, Path(tmp), data_root)
        info = log_pyfunc(checkpoint, input_example=example, name=MODEL_ARTIFACT, onnx=onnx_file)
    tags = {"run_id": run_id, **onnx_tags, **version_tags}
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    return mv


def tracked_train(params: dict, data_root, out_dir, run_name: str | None = None,
                  tags: dict | None = None, data_version: str | None = None) -> dict:
    """Train with everything logged to MLflow, register the model, alias it `challenger`.

    Fails before training (TrackingServerUnavailable, naming the URI) when the server is down.
    A crash inside the run marks it FAILED (KeyboardInterrupt: KILLED); the exception propagates.
    Returns a small JSON-serialisable dict (the DAG passes it through XCom).
    """
    import mlflow

    from pipeline.train import train

    t_start = time.perf_counter()
    uri = check_server()
    client = _client(uri)
    name = _name(params)
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    trigger = tags.get("trigger", "manual")
    run_name = run_name or _run_name(data_version, trigger)
    data_root, out_dir = Path(data_root), Path(out_dir)
    experiment = mlflow.set_experiment(params["registry"]["experiment"])
    commit = _git_commit()

    run_tags = {
        **tags, "trigger": trigger, "git_commit": commit, "mlflow.source.git.commit": commit,
        "data.version": data_version or "none", "data.root": str(data_root),
        "mlflow.user": tags.get("mlflow.user", getpass.getuser()), "host": socket.gethostname(),
    }
    with mlflow.start_run(run_name=run_name, tags=run_tags) as run:
        run_id = run.info.run_id
        mlflow.log_params({k: ("" if v is None else str(v)[:6000]) for k, v in config.flatten(params).items()})
        mlflow.log_dict(params, "params.yaml")

        def on_epoch_end(row: dict) -> None:
            step = int(row.get("epoch", 0))
            mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch" and _finite(v)}, step=step)

        t_train = time.perf_counter()
        result = train(params, data_root, out_dir, on_epoch_end=on_epoch_end, progress=False)
        t_train = time.perf_counter() - t_train

        # parameters in effect (defaults filled by train) that were not in params.yaml
        effective = {k: str(v)[:6000] for k, v in (result.params or {}).items()
                     if k not in config.flatten(params)}
        if effective:
            mlflow.log_params(effective)

        metrics = dict(result.metrics or {})
        final = {(k if k.startswith(("stress_", "external_", "val_")) else f"test_{k}"): float(v)
                 for k, v in metrics.items() if _finite(v) and k not in ("val_auc", "best_epoch")}
        per_shift = metrics.get("stress_per_shift") or {}
        for shift_name, figures in per_shift.items():  # MLflow metric names: no ':'
            final.update({f"stress.{shift_name.replace(':', '.')}.{k}": float(v)
                          for k, v in figures.items() if _finite(v)})
        if per_shift:
            mlflow.log_table({"shift": list(per_shift), **{k: [per_shift[x][k] for x in per_shift]
                                                         for k in next(iter(per_shift.values()))}},
                             artifact_file="stress/per_shift.json")
        final.update({k if k != "val_auc" else "best_val_auc": float(metrics[k])
                      for k in ("val_auc", "best_epoch") if _finite(metrics.get(k))})
        cm = metrics.get("confusion_matrix")
        if isinstance(cm, (list, tuple)) and len(cm) == 2 and all(len(r) == 2 for r in cm):
            (tn, fp), (fn, tp) = cm
            final.update(test_tn=float(tn), test_fp=float(fp), test_fn=float(fn), test_tp=float(tp))
        mlflow.log_metrics(final)
        if result.gate_metrics:  # the input gate's fitted thresholds (pipeline.gate)
            mlflow.log_metrics(result.gate_metrics)
            mlflow.log_params({"gate.fitted_max_distance": f"{result.gate_metrics['gate_max_distance']:.4f}",
                               "gate.fitted_min_upright": f"{result.gate_metrics['gate_min_upright']:.4f}"})

        dataset = result.dataset or {}
        fingerprint = str(dataset.get("fingerprint", ""))
        data_tags = {"data.fingerprint": fingerprint or "none",
                     "data.dvc_hash": data_version or "none",
                     "data.rejected": str(dataset.get("rejected", 0)),
                     "data.duplicates_dropped": str(dataset.get("duplicates", 0))}
        for split_name, per_class in (dataset.get("counts") or {}).items():
            if isinstance(per_class, dict):
                for cls, n in per_class.items():
                    data_tags[f"data.count.{split_name}.{cls}"] = str(n)
                data_tags[f"data.count.{split_name}"] = str(sum(int(n) for n in per_class.values()))
            else:
                data_tags[f"data.count.{split_name}"] = str(per_class)
        mlflow.set_tags(data_tags)
        digest = (data_version or fingerprint or "unknown")
        ds_name = f"chest_xray@{digest[:8]}"
        mlflow.log_input(_dataset_input(data_root, out_dir, digest, ds_name), context="training",
                         tags={"dvc_hash": data_version or "none", "fingerprint": fingerprint or "none"})

        system = dict(result.system or {})
        mlflow.set_tags({f"system.{k}": str(v) for k, v in system.items()})
        if _finite(system.get("wall_time_s")):
            mlflow.log_metric("train_wall_time_s", float(system["wall_time_s"]))
        mlflow.log_dict(_jsonable(system), "system.json")

        for fname in ("metrics.json", "history.json", "validation_report.json", "split.json", "operating_point.json"):
            if (out_dir / fname).exists():
                mlflow.log_artifact(str(out_dir / fname), artifact_path="reports")
        for plot in result.plots or []:
            mlflow.log_artifact(str(plot), artifact_path="plots")

        image_size = int(params["preprocess"]["image_size"])
        mv = _register(client, name, Path(result.checkpoint), run_id, _example_bytes(data_root, image_size), {
            "data.version": data_version or "none", "data.fingerprint": fingerprint or "none",
            "git_commit": commit, "trigger": trigger,
            **{f"test.{k}": _fmt(metrics[k]) for k in METRIC_KEYS if k in metrics},
        }, data_root=data_root)
        mlflow.set_tags({"registered_model": name, "registered_version": str(mv.version)})
        from pipeline import model_card

        client.update_model_version(name, str(mv.version), description=model_card.render(
            mv.version, metrics, params, data_version or fingerprint or "unknown", dataset.get("counts") or {}))
        t_total = time.perf_counter() - t_start
        mlflow.log_metric("tracking_overhead_s", t_total - t_train)

    return _jsonable({
        "run_id": run_id, "run_name": run_name, "experiment_id": experiment.experiment_id,
        "tracking_uri": uri, "model_name": name, "version": int(mv.version),
        "model_uri": f"models:/{name}/{mv.version}", "metrics": metrics,
        "checkpoint": str(result.checkpoint), "out_dir": str(out_dir),
        "data_version": data_version, "fingerprint": fingerprint,
        "wall_time_s": round(t_total, 2),
        "seconds": {"train": round(t_train, 2), "tracking": round(t_total - t_train, 2)},
    })


def register_checkpoint(checkpoint, params: dict, run_name: str | None = None, tags: dict | None = None,
                        metrics: dict | None = None, data_root=None) -> dict:
    """Log an existing model.pt as a run + new registered version (alias `challenger`).

    For models trained elsewhere (and for tests/benchmarks: degraded models). No training.
    """
    import mlflow

    uri = check_server()
    client = _client(uri)
    name = _name(params)
    mlflow.set_experiment(params["registry"]["experiment"])
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    tags.setdefault("trigger", "import")
    with mlflow.start_run(run_name=run_name or _run_name(None, tags["trigger"]), tags=tags) as run:
        mlflow.log_params({k: ("" if v is None else str(v)[:6000]) for k, v in config.flatten(params).items()})
        if metrics:
            mlflow.log_metrics({f"test_{k}": float(v) for k, v in metrics.items() if _finite(v)})
        example = _example_bytes(Path(data_root), int(params["preprocess"]["image_size"])) if data_root else None
        mv = _register(client, name, Path(checkpoint), run.info.run_id, example, {"trigger": tags["trigger"]},
                       data_root=Path(data_root) if data_root else None)
    return {"run_id": run.info.run_id, "version": int(mv.version), "model_name": name,
            "model_uri": f"models:/{name}/{mv.version}"}


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


def load_version(version: int, name: str | None = None, device=None, tracking_uri: str | None = None,
                 fast: bool = False, threads: int = 0):
    """(Predictor, ModelVersion) of one registered version. fast: run it on the fast path
    (pipeline.fastpath) when the version passed its agreement check; else float32 torch."""
    from pipeline.predict import Predictor
    from pipeline.pyfunc_model import checkpoint_in, onnx_in

    client = _client(tracking_uri)
    name = _name(name=name)
    mv = client.get_model_version(name, str(version))
    local = download_version(int(mv.version), name, client)
    predictor = Predictor.from_checkpoint(checkpoint_in(local), device=device)
    tags = mv.tags or {}
    if fast and tags.get(FAST_PATH_TAG) == "on" and onnx_in(local) is not None:
        from pipeline.fastpath import FastEngine

        predictor.engine = FastEngine(onnx_in(local), predictor.intensity,
                                      precision=tags.get(f"{FAST_PATH_TAG}.precision"), threads=threads)
    return predictor, mv


def fast_path_report(version: int, splits, params: dict, cache, name: str | None = None) -> dict:
    """The version's fast path against its float32 reference on the held-out patients and on the
    same patients under every stress shift (pipeline.fastpath.check). Anything going wrong is a
    failed check: the fast path is an optimisation, never a requirement."""
    import numpy as np

    from pipeline import evaluate, fastpath, quality
    from pipeline.pyfunc_model import onnx_in

    name = _name(name=name)
    try:
        predictor, _ = load_version(version, name)
        onnx_file = onnx_in(download_version(version, name))
        if onnx_file is None:
            raise FileNotFoundError("the version has no ONNX export")
        held = evaluate.sample_arrays(splits.test, predictor.image_size, params, cache)
        shifted = quality.stress_set(splits.test, params, predictor.image_size)
        stress = (np.concatenate(list(shifted.arrays.values())), np.tile(shifted.labels, len(shifted.arrays)))
        return _jsonable(fastpath.check(predictor, onnx_file, {"held-out": held, "stress": stress}))
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "reason": f"check failed: {type(exc).__name__}: {exc}", "precision": "", "sets": {}}


def check_fast_path(version: int, splits, params: dict, cache, name: str | None = None) -> dict:
    """fast_path_report, recorded on the version: tag `fast_path=on|off` with the figures. The site
    runs a version on the fast path only when it is `on` (load_version(fast=True))."""
    name = _name(name=name)
    result = fast_path_report(version, splits, params, cache, name)
    sets = result["sets"].values()
    tags = {FAST_PATH_TAG: "on" if result["ok"] else "off", f"{FAST_PATH_TAG}.reason": result["reason"][:500],
            f"{FAST_PATH_TAG}.precision": result["precision"]}
    if sets:
        tags[f"{FAST_PATH_TAG}.label_agreement"] = f"{min(r['label_agreement'] for r in sets):.4f}"
        tags[f"{FAST_PATH_TAG}.auc_delta"] = f"{max(r.get('auc_delta', 0.0) for r in sets):.4f}"
    _tag_version(_client(), name, version, tags)
    return result


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
def evaluate_candidates(challenger_version: int, params: dict, data_root) -> dict:
    """Score the challenger and the current champion now, on the same held-out patients, the same
    patients under every stress shift and any external set, each at its own stored threshold; and
    compare them paired on those same images (DeLong for held-out and external, a patient bootstrap
    for the mean AUC under shift). Returns plain JSON (the DAG passes it through XCom)."""
    from pipeline import compare, data, quality

    client = _client(check_server())
    name = _name(params)
    splits, _report, cache = data.load(Path(data_root), params)
    champion = _alias_version(client, name, CHAMPION)
    level = float(params["promotion"]["confidence"])

    def score(version: int) -> dict:
        predictor, _ = load_version(version, name)
        return quality.score(predictor, splits, params, cache)

    ch = score(int(challenger_version))
    fast = check_fast_path(int(challenger_version), splits, params, cache, name)
    out = {"model_name": name, "data_root": str(data_root), "n_test": len(splits.test),
           "n_stress": ch["stress"]["n"], "n_external": len(getattr(splits, "external", []) or []),
           "challenger": {"version": int(challenger_version), "metrics": quality.flat_metrics(ch)},
           "champion": None, "comparison": None,
           "fast_path": {k: fast[k] for k in ("ok", "reason", "precision")}}
    if champion is not None:
        cp = ch if champion == int(challenger_version) else score(champion)
        out["champion"] = {"version": champion, "metrics": quality.flat_metrics(cp)}
        a, b = ch["probs"], cp["probs"]
        comparison = {"test": compare.delong(a["test"]["y"], a["test"]["p"], b["test"]["p"], level).to_dict(),
                      "stress": compare.paired_bootstrap(
                          a["stress"]["y"], a["stress"]["p"], b["stress"]["p"],
                          int(params["promotion"]["bootstrap_samples"]), int(params["data"]["seed"]), level).to_dict()}
        if "external" in a:
            comparison["external"] = compare.delong(a["external"]["y"], a["external"]["p"], b["external"]["p"],
                                                    level).to_dict()
        out["comparison"] = comparison
    return _jsonable(out)


def _floor_failures(metrics: dict, floors: dict, prefix: str = "", label: str = "") -> list[str]:
    failed = []
    for key, floor in (floors or {}).items():
        value = metrics.get(prefix + key)
        name = f"{label}{key}"
        if not _finite(value):
            failed.append(f"{name} unavailable (floor {floor})")
        elif value < float(floor):
            failed.append(f"{name} {value:.4f} < floor {float(floor):.4f}")
    return failed


def _all_floor_failures(metrics: dict, policy: dict) -> list[str]:
    """Held-out floors, worst-shift floors, and external floors when an external set was scored."""
    failed = _floor_failures(metrics, policy.get("floors"))
    failed += _floor_failures(metrics, policy.get("stress_floors"), "stress_worst_", "worst-shift ")
    if "external_auc" in metrics:
        failed += _floor_failures(metrics, policy.get("external_floors"), "external_", "external ")
    return failed


COMPARISON_LABELS = {"test": "held-out", "stress": "under shift (mean AUC)", "external": "external"}


def decide(scores: dict, params: dict) -> dict:
    """Apply the params.yaml `promotion` policy to evaluate_candidates()'s scores.

    1. the challenger must pass every floor: held-out, worst stress shift, external (if any);
    2. no champion: promote when first_champion == "promote_if_floors" (else leave it to a person);
    3. a champion that is itself under a floor on today's data is replaced by a challenger passing them;
    4. otherwise, paired on the same images (held-out, stress, external): reject when the challenger
       is significantly worse anywhere (the interval of AUC(challenger) - AUC(champion) lies below 0)
       or not shown non-inferior (its lower bound under -non_inferiority_margin); promote when it is
       non-inferior everywhere and its mean AUC under shift does not go down. A challenger better in
       distribution but worse under shift is therefore rejected: the shifted figure is the one that
       predicts what doctors will see on films of other machines.
    """
    policy = params["promotion"]
    margin = float(policy["non_inferiority_margin"])
    first = policy.get("first_champion", "promote_if_floors")
    ch, champ = scores["challenger"], scores.get("champion")
    ch_m = ch["metrics"]
    n = scores.get("n_test")
    base = {"challenger_version": ch["version"], "champion_version": champ["version"] if champ else None,
            "challenger_score": ch_m.get("stress_mean_auc"),
            "champion_score": champ["metrics"].get("stress_mean_auc") if champ else None,
            "non_inferiority_margin": margin, "n_test": n, "n_stress": scores.get("n_stress"),
            "challenger_metrics": ch_m, "champion_metrics": champ["metrics"] if champ else None,
            "comparison": scores.get("comparison"), "decided_at": _now()}
    on = f" on {n} held-out images" if n else ""

    failed = _all_floor_failures(ch_m, policy)
    base["floors_failed"] = failed
    if failed:
        return _jsonable({**base, "promote": False,
                          "reason": f"challenger v{ch['version']} is under the floors{on}: " + "; ".join(failed)})
    if champ is None:
        if first == "promote_if_floors":
            return _jsonable({**base, "promote": True, "reason":
                              f"no champion yet; challenger v{ch['version']} passes every floor (held-out AUC "
                              f"{_fmt(ch_m.get('auc'))}, worst-shift AUC {_fmt(ch_m.get('stress_worst_auc'))}{on})"})
        return _jsonable({**base, "promote": False, "reason":
                          f"no champion yet and promotion.first_champion={first!r}: promote by hand "
                          f"(python -m pipeline promote --version {ch['version']} --force)"})
    if champ["version"] == ch["version"]:
        return _jsonable({**base, "promote": False, "reason": f"v{ch['version']} is already the champion"})
    champ_failed = _all_floor_failures(champ["metrics"], policy)
    base["champion_floors_failed"] = champ_failed
    if champ_failed:
        return _jsonable({**base, "promote": True, "reason":
                          f"champion v{champ['version']} is now under the floors{on} ({'; '.join(champ_failed)}); "
                          f"challenger v{ch['version']} passes them"})
    comparison = scores.get("comparison") or {}
    if not comparison.get("test") or not comparison.get("stress"):
        return _jsonable({**base, "promote": False, "reason": "no paired comparison with the champion was made"})
    parts, worse, unproven = [], [], []
    for key in ("test", "stress", "external"):
        c = comparison.get(key)
        if not c:
            continue
        text = f"{COMPARISON_LABELS[key]} {c['delta']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
        parts.append(text)
        if c["high"] < 0:
            worse.append(COMPARISON_LABELS[key])
        elif c["low"] < -margin:
            unproven.append(COMPARISON_LABELS[key])
    verdict = (f"challenger v{ch['version']} vs champion v{champ['version']}, AUC difference "
               f"[{int(100 * float(policy['confidence']))} % interval]: " + "; ".join(parts))
    if worse:
        return _jsonable({**base, "promote": False, "reason": f"{verdict}: significantly worse {', '.join(worse)}"})
    if unproven:
        return _jsonable({**base, "promote": False, "reason":
                          f"{verdict}: not shown non-inferior (margin {margin}) {', '.join(unproven)}"})
    if comparison["stress"]["delta"] < 0:
        return _jsonable({**base, "promote": False, "reason": f"{verdict}: no gain under shift"})
    return _jsonable({**base, "promote": True, "reason": f"{verdict}: non-inferior everywhere, not worse under shift"})


# ----------------------------------------------------------------------------- alias changes
# --- hardening (issue 11 items 8, 13, 16): lock, idempotent promote, serving check -----------
@contextmanager
def promotion_lock(client, name: str, wait_s: float | None = None, stale_s: float | None = None):
    """Registry-wide mutex: an atomically created registered model `<name>.promotion-lock`.

    Staleness is measured on this waiter's own monotonic clock: a lock is broken once this
    process has seen the *same* lock (same server creation time) held for stale_s. Comparing
    time.time() with the server's creation timestamp mixed two clocks: a client clock ahead of the
    server's broke live locks. The cost: a crashed holder's lock is broken stale_s after a waiter
    first sees it, not stale_s after it was taken.
    Breaking is serialised by a second atomic create, `<lock>.break-<creation ms>`: without it two
    waiters could both see the stale lock, one break it and take a new one, and the other then
    delete that new lock and enter too.
    """
    from mlflow.exceptions import MlflowException

    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    stale_s = LOCK_STALE_S if stale_s is None else stale_s
    lock = f"{name}{LOCK_SUFFIX}"
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    seen: dict[int, float] = {}   # lock creation timestamp (ms, server) -> first seen (monotonic, here)
    while True:
        try:
            client.create_registered_model(lock, tags={"owner": owner, "acquired_at": f"{time.time():.3f}"},
                                           description="transient: held while an alias of "
                                                       f"'{name}' changes (pipeline.registry)")
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
            held = client.get_registered_model(lock)
        except MlflowException:
            continue  # released between our create and our read: try again at once
        stamp = int(held.creation_timestamp or 0)
        age = time.monotonic() - seen.setdefault(stamp, time.monotonic())
        if age >= stale_s:
            _break_stale_lock(client, lock, stamp, held.tags.get("owner"), age)
            continue
        if time.monotonic() > deadline:
            raise PromotionError(f"promotion lock {lock} held by {held.tags.get('owner')} for {age:.0f}s "
                                 f"(seen here); gave up after {wait_s:.0f}s")
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
            log.warning("breaking stale promotion lock %s held by %s (seen for %.0fs)", lock, holder, age)
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
    for role in ("challenger", "champion"):
        for key, value in (decision.get(f"{role}_metrics") or {}).items():
            if key in METRIC_KEYS:
                tags[f"{role}.{key}"] = _fmt(value)
    return tags


def _tag_version(client, name: str, version: int, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


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
            return {"promoted": False, "already": True, "stale": False, "version": version,
                    "champion": current, "reason": f"v{version} is already the champion"}
        expected = decision.get("champion_version")
        if not force and (None if expected is None else int(expected)) != current:
            reason = (f"stale decision: it compared v{version} with champion "
                      f"{'v' + str(expected) if expected else 'none'}, but the champion is now "
                      f"{'v' + str(current) if current else 'none'}; evaluate again")
            _tag_version(client, name, version, {**_decision_tags(decision, "stale"), "decision_reason": reason})
            return {"promoted": False, "stale": True, "version": version, "champion": current, "reason": reason}
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS, str(current))
        client.set_registered_model_alias(name, CHAMPION, str(version))
        tags = _decision_tags(decision, "promoted" if not force else "promoted_manually")
        tags["promoted_over"] = str(current) if current is not None else "none"
        _tag_version(client, name, version, tags)
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
            "scores": {k: v for k, v in t.items() if k.startswith(("challenger.", "champion.", "test."))}}


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
# pipeline/cli.py (lead) calls cli_<command>(args, params). Arguments are read with getattr so the
# functions work with the lead's parser as is; add_arguments() lists everything they understand.
def add_arguments(command: str, parser) -> None:
    """Optional extra arguments of `python -m pipeline promote|rollback|status`."""
    parser.add_argument("--model", default=None, help="registered model name (default: params / $XRAY_MODEL_NAME)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    if command == "promote":
        parser.add_argument("--evaluate", action="store_true",
                            help="score the version and the champion now on the held-out split of --data and "
                                 "apply the params.yaml promotion policy (default: a person promotes, no checks)")
        parser.add_argument("--data", default=None, help="dataset for --evaluate (default: $XRAY_DATA/$DATA)")
    if command == "rollback":
        parser.add_argument("--reason", default="manual rollback", help="why (stored on the version)")


def _print(obj: dict, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else text)


def cli_promote(args, params: dict | None = None) -> int:
    """Exit 0: promoted (or already champion); 2: the policy rejected it / the decision was stale /
    the version failed the serving check.

    Without --evaluate a person decides: the version becomes champion once it passes
    serving_check (tag decision=promoted_manually, with --reason). With --evaluate the policy decides, as in the DAG.
    """
    params = params if params is not None else config.load_params(getattr(args, "params", None),
                                                                 getattr(args, "overrides", None) or ())
    name = getattr(args, "model", None) or _name(params)
    client = _client(check_server())
    version = getattr(args, "version", None) or _alias_version(client, name, CHALLENGER)
    if version is None:
        raise SystemExit(f"no version given and '{name}' has no '{CHALLENGER}' alias")
    as_json = getattr(args, "json", False)
    reason = getattr(args, "reason", None)
    if not getattr(args, "evaluate", False):
        # A person may overrule the comparison with the champion, never the serving check: a model
        # that does not load or answers NaN would only be refused by the web app (or worse, served).
        problems = serving_check(version, name)
        if problems:
            _print({"promoted": False, "version": int(version), "problems": problems}, as_json,
                   f"v{version}: NOT promoted -- " + "; ".join(problems))
            return 2
        reason = reason if reason and reason != "manual promotion" else "manual promotion"
        result = promote(version, {"reason": f"{reason} (by {getpass.getuser()})", "decided_at": _now()},
                         name=name, force=True)
        _print(result, as_json, f"v{version}: {'now champion' if result['promoted'] else 'unchanged'} -- "
                                f"{result['reason']}; previous_champion: v{result.get('previous_champion')}")
        return 0
    data = Path(getattr(args, "data", None) or config.default_data_root())
    scores = evaluate_candidates(version, {**params, "registry": {**params["registry"], "model_name": name}}, data)
    decision = decide(scores, params)
    if reason and reason != "manual promotion":
        decision["reason"] = f"{decision['reason']} ({reason})"
    result = promote(version, decision, name=name) if decision["promote"] else reject(version, decision, name=name)
    verdict = "promoted" if result["promoted"] else ("stale" if result.get("stale") else "rejected")
    _print({"decision": decision, "result": result}, as_json, f"v{version}: {verdict} -- {result['reason']}")
    return 0 if result["promoted"] else 2


def cli_rollback(args, params: dict | None = None) -> int:
    name = getattr(args, "model", None) or (_name(params) if params is not None else None)
    try:
        result = rollback(name=name, reason=getattr(args, "reason", None) or "manual rollback")
    except PromotionError as exc:
        print(f"rollback: {exc}")
        return 2
    _print(result, getattr(args, "json", False),
           f"champion is now v{result['champion']} (rolled back from v{result['rolled_back_from']}); "
           f"previous_champion: {'v' + str(result['previous_champion']) if result['previous_champion'] else 'none'}")
    return 0


def format_status(st: dict) -> str:
    lines = [f"model {st['model_name']} at {st['tracking_uri']}"]
    for role in ("champion", "previous_champion", "challenger"):
        d = st[role]
        if d is None:
            lines.append(f"  {role:<18} none")
            continue
        auc = d["scores"].get("challenger.auc") or d["scores"].get("test.auc") or "?"
        lines.append(f"  {role:<18} v{d['version']}  auc {auc}  data {d['data_version'] or '?'}  "
                     f"{d['decision'] or 'undecided'}: {d['reason'] or ''}")
    lines.append("  recent versions:")
    for v in st["versions"]:
        lines.append(f"    v{v['version']:<4} {','.join(v['aliases']) or '-':<28} {v['decision']}: {v['reason']}")
    return "\n".join(lines)


def cli_status(args, params: dict | None = None) -> int:
    name = getattr(args, "model", None) or (_name(params) if params is not None else None)
    st = status(name=name)
    _print(st, getattr(args, "json", False), format_status(st))
    return 0
