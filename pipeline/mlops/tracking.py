"""Run logging and lineage in MLflow: a training run with its parameters, metrics, plots, data
version and system facts, and the new registered version (pyfunc + validated ONNX export and its
int8 copy) that it produces, aliased `challenger`.

Who calls it: the DAG's train task and `python -m pipeline train --mlflow` (tracked_train);
imports of models trained elsewhere, tests and benchmarks (register_checkpoint).
"""
from __future__ import annotations

import datetime as _dt
import getpass
import io
import logging
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from pipeline import timing
from pipeline.model import artifacts
from pipeline.settings import config
from pipeline.settings.params import Params
from pipeline.mlops.loading import warm_start
from pipeline.mlops.server import check_server, connect, finite, jsonable, model_name, now
from pipeline.mlops.versions import METRIC_KEYS, log_version_scores
from pipeline.data.preprocess import load_image, to_array
from pipeline.data.preprocess import load_spread
from pipeline.evaluation import quality
from pipeline.inference import onnx_export
from pipeline.inference.predict import Predictor
from pipeline.mlops.pyfunc import log_pyfunc
from pipeline.training.train import train
from pipeline.mlops import aliases, model_card

log = logging.getLogger(__name__)



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


def _run_name(data_version: str | None, trigger: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M")
    data = f"data-{data_version[:8]}" if data_version else "data-local"
    return f"{stamp}_{data}_{trigger}"


def _example_bytes(data_root: Path, image_size: int) -> bytes | None:
    """A small real X-ray from the data (re-encoded PNG at model size) as the input example."""
    from PIL import Image

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


def _dataset_input(splits, data_root: Path, digest: str, name: str):
    """An MLflow dataset describing the images used, from train()'s own splits (one row per image:
    path, label, patient, split, content hash)."""
    import mlflow.data
    import pandas as pd
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    rows = [{"path": str(s.path), "label": config.CLASSES[s.label], "patient": s.patient, "split": split_name,
             "digest": s.digest} for split_name, part in splits.items() for s in part]
    with warnings.catch_warnings():   # "source can be interpreted in multiple ways": it is a local folder
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(data_root))
    return mlflow.data.from_pandas(pd.DataFrame(rows, columns=["path", "label", "patient", "split", "digest"]),
                                   source=source, targets="label", name=name, digest=digest[:36])


def _validation_arrays(data_root: Path | None, image_size: int, n: int = 32):
    """(uint8 [n, S, S], where from): n real X-rays spread over the data, else a synthetic set."""
    import numpy as np

    arrays = load_spread(sorted(Path(data_root).rglob("*.jpeg")), image_size, n) if data_root else None
    if arrays is not None:
        return arrays, f"{len(arrays)} real X-rays of {data_root}"
    rng = np.random.default_rng(0)  # no data given (imports, benchmarks): textured grey images
    ramp = np.linspace(0, 255, image_size)[None, :, None]
    return np.clip(ramp + rng.normal(0, 40, (n, image_size, image_size)), 0, 255).astype(np.uint8), "synthetic"


def _export_onnx(checkpoint: Path, out_dir: Path, data_root: Path | None,
                 calibration: list[Path] | None = None) -> tuple[Path, Path | None, dict[str, str]]:
    """The checkpoint's ONNX export, validated by ONNX Runtime (raises onnx_export.OnnxMismatch),
    and its int8 copy calibrated on the `calibration` X-rays (training patients' files; None: no
    int8 copy). A failed quantization is logged and leaves the version without the int8 copy:
    like the whole fast path, it is an optimisation, never a requirement."""
    import mlflow

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    with timing.step("onnx export"):
        path = onnx_export.export(predictor, out_dir / artifacts.ONNX_FILE)
    with timing.step("onnx validate"):
        arrays, source = _validation_arrays(data_root, predictor.image_size)
        report = onnx_export.validate(path, predictor, arrays)
    mlflow.log_dict({**report, "images": source}, "onnx/validation.json")
    tags = {"onnx.max_abs_logit_diff": f"{report['max_abs_logit_diff']:.1e}", "onnx.validated_on": source}
    int8 = None
    images = load_spread(sorted(calibration), predictor.image_size, onnx_export.CALIBRATION_IMAGES) \
        if calibration else None
    if images is not None:
        try:
            with timing.step("int8 quantize"):
                int8 = onnx_export.quantize(path, images, predictor.intensity, out_dir / artifacts.ONNX_INT8_FILE)
            tags["onnx.int8_calibrated_on"] = f"{len(images)} training X-rays"
        except Exception as exc:  # noqa: BLE001
            log.warning("int8 copy not made: %s: %s", type(exc).__name__, exc)
            tags["onnx.int8_calibrated_on"] = f"failed: {type(exc).__name__}: {exc}"[:250]
    return path, int8, tags


def _register(client, name: str, checkpoint: Path, run_id: str, example: bytes | None,
              version_tags: dict[str, str], data_root: Path | None = None,
              calibration: list[Path] | None = None, exported: Path | None = None,
              alias: bool = True) -> Any:
    """Log the pyfunc (with its validated ONNX export and int8 copy) under the active run, register
    it as a new version, alias it challenger (alias=False: not), a move the audit trail records.
    `exported`: a registered version's directory whose ONNX files are taken as they are (a version
    with the same weights: pipeline.mlops.site_version)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description=(
            "ResNet18 chest X-ray pneumonia classifier (pyfunc: raw image bytes -> probability, "
            "label, threshold). Alias `champion` serves doctors; `challenger` is the newest "
            "candidate; `previous_champion` is what a rollback restores."))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    with tempfile.TemporaryDirectory(prefix="xray-onnx-") as tmp:
        if exported is not None:
            onnx_file, int8_file, onnx_tags = artifacts.onnx_in(exported), artifacts.onnx_in(exported, int8=True), {}
        else:
            onnx_file, int8_file, onnx_tags = _export_onnx(checkpoint, Path(tmp), data_root, calibration)
        with timing.step("log pyfunc"):
            info = log_pyfunc(checkpoint, input_example=example, name=artifacts.MODEL_ARTIFACT, onnx=onnx_file,
                              onnx_int8=int8_file)
    tags = {"run_id": run_id, **onnx_tags, **version_tags}
    with timing.step("register version"):
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
    if alias:
        aliases.make_challenger(client, name, int(mv.version), f"registered by run {run_id} "
                                                               f"(trigger {version_tags.get('trigger', 'manual')})")
    return mv


def _run_metrics(metrics: dict) -> dict[str, float]:
    """train()'s metrics as flat MLflow metric names: test_* (held-out), stress_*, external_*, golden_*,
    stress.<family>.<strength>.<metric> per shift, best_val_auc, best_epoch, the confusion counts."""
    final = {(k if k.startswith(("stress_", "external_", "golden_", "val_")) else f"test_{k}"): float(v)
             for k, v in metrics.items() if finite(v) and k not in ("val_auc", "best_epoch")}
    for shift_name, figures in (metrics.get("stress_per_shift") or {}).items():  # MLflow metric names: no ':'
        final.update({f"stress.{shift_name.replace(':', '.')}.{k}": float(v)
                      for k, v in figures.items() if finite(v)})
    final.update({k if k != "val_auc" else "best_val_auc": float(metrics[k])
                  for k in ("val_auc", "best_epoch") if finite(metrics.get(k))})
    cm = metrics.get("confusion_matrix")
    if isinstance(cm, (list, tuple)) and len(cm) == 2 and all(len(r) == 2 for r in cm):
        (tn, fp), (fn, tp) = cm
        final.update(test_tn=float(tn), test_fp=float(fp), test_fn=float(fn), test_tp=float(tp))
    return final


def _data_tags(dataset: dict, data_version: str | None) -> dict[str, str]:
    """The run's data lineage as tags: DVC hash, content fingerprint, rejected, counts per split/class."""
    tags = {"data.fingerprint": str(dataset.get("fingerprint", "")) or "none",
            "data.dvc_hash": data_version or "none",
            "data.rejected": str(dataset.get("rejected", 0)),
            "data.duplicates_dropped": str(dataset.get("duplicates", 0))}
    golden = dataset.get("golden") or {}
    if golden:   # the golden set checked (pipeline.data.golden) and what it took out of this data version
        tags.update({"golden.root": str(golden.get("root")), "golden.fingerprint": str(golden.get("fingerprint")),
                     "golden.images": str(golden.get("images")),
                     "data.golden_excluded": str(dataset.get("golden_excluded", 0)),
                     "data.golden_excluded_patients": str(dataset.get("golden_excluded_patients", 0))})
    for split_name, per_class in (dataset.get("counts") or {}).items():
        if isinstance(per_class, dict):
            for cls, n in per_class.items():
                tags[f"data.count.{split_name}.{cls}"] = str(n)
            tags[f"data.count.{split_name}"] = str(sum(int(n) for n in per_class.values()))
        else:
            tags[f"data.count.{split_name}"] = str(per_class)
    return tags


def tracked_train(params: Params, data_root, out_dir, run_name: str | None = None,
                  tags: dict | None = None, data_version: str | None = None) -> dict:
    """Train with everything logged to MLflow, register the model, alias it `challenger`.

    Fails before training (TrackingServerUnavailable, naming the URI) when the server is down.
    A crash inside the run marks it FAILED (KeyboardInterrupt: KILLED); the exception propagates.
    Returns a small JSON-serialisable dict (the DAG passes it through XCom).
    """
    import mlflow

    t_start = time.perf_counter()
    uri = check_server()
    client = connect(uri)
    name = model_name(params)
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    trigger = tags.get("trigger", "manual")
    run_name = run_name or _run_name(data_version, trigger)
    data_root, out_dir = Path(data_root), Path(out_dir)
    experiment = mlflow.set_experiment(params.registry.experiment)
    commit = _git_commit()

    run_tags = {
        **tags, "trigger": trigger, "git_commit": commit, "mlflow.source.git.commit": commit,
        "data.version": data_version or "none", "data.root": str(data_root),
        "mlflow.user": tags.get("mlflow.user", getpass.getuser()), "host": socket.gethostname(),
    }
    with mlflow.start_run(run_name=run_name, tags=run_tags) as run:
        run_id = run.info.run_id
        _log_params(params)
        mlflow.log_dict(params, "params.yaml")

        def on_epoch_end(row: dict) -> None:
            step = int(row.get("epoch", 0))
            mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch" and finite(v)}, step=step)

        t_train = time.perf_counter()
        with timing.step("train"):
            result = train(params, data_root, out_dir, on_epoch_end=on_epoch_end, progress=False,
                           init=warm_start(params))
        t_train = time.perf_counter() - t_train

        metrics = dict(result.metrics or {})
        with timing.step("log training"):
            fingerprint = _log_training(result, metrics, data_root, out_dir, data_version)
        with timing.step("register"):
            mv = _register_trained(client, name, result, metrics, params, run_id, data_root, data_version,
                                   fingerprint, commit, trigger)
        t_total = time.perf_counter() - t_start
        mlflow.log_metric("tracking_overhead_s", t_total - t_train)
        mlflow.log_dict(timing.take(clear=False), "timing/steps.json")   # where the run's minutes went

    return jsonable({
        "run_id": run_id, "run_name": run_name, "experiment_id": experiment.experiment_id,
        "tracking_uri": uri, "model_name": name, "version": int(mv.version),
        "model_uri": f"models:/{name}/{mv.version}", "metrics": metrics,
        "checkpoint": str(result.checkpoint), "out_dir": str(out_dir),
        "data_version": data_version, "fingerprint": fingerprint,
        "wall_time_s": round(t_total, 2),
        "seconds": {"train": round(t_train, 2), "tracking": round(t_total - t_train, 2)},
    })


def _log_params(params: Params) -> None:
    """Every setting in effect, flat (MLflow caps a value at 6000 characters)."""
    import mlflow

    mlflow.log_params({k: ("" if v is None else str(v)[:6000]) for k, v in params.flat().items()})


def _log_training(result, metrics: dict, data_root: Path, out_dir: Path, data_version: str | None) -> str:
    """Everything a reviewer reads on the run (in the active MLflow run): metrics, the stress table,
    the gate's limits, data tags and the dataset input, system, reports and plots. Returns the
    data fingerprint."""
    import mlflow

    mlflow.log_metrics(_run_metrics(metrics))
    per_shift = metrics.get("stress_per_shift") or {}
    if per_shift:
        mlflow.log_table({"shift": list(per_shift), **{k: [per_shift[x][k] for x in per_shift]
                                                     for k in next(iter(per_shift.values()))}},
                         artifact_file="stress/per_shift.json")
    if result.gate_metrics:  # the input gate's fitted thresholds (pipeline.inference.gate)
        mlflow.log_metrics(result.gate_metrics)
        mlflow.log_params({"gate.fitted_max_distance": f"{result.gate_metrics['gate_max_distance']:.4f}",
                           "gate.fitted_min_upright": f"{result.gate_metrics['gate_min_upright']:.4f}"})

    dataset = result.dataset or {}
    fingerprint = str(dataset.get("fingerprint", ""))
    mlflow.set_tags(_data_tags(dataset, data_version))
    digest = (data_version or fingerprint or "unknown")
    mlflow.log_input(_dataset_input(result.splits, data_root, digest, f"chest_xray@{digest[:8]}"), context="training",
                     tags={"dvc_hash": data_version or "none", "fingerprint": fingerprint or "none"})

    system = dict(result.system or {})
    mlflow.set_tags({f"system.{k}": str(v) for k, v in system.items()})
    if finite(system.get("wall_time_s")):
        mlflow.log_metric("train_wall_time_s", float(system["wall_time_s"]))
    mlflow.log_dict(jsonable(system), "system.json")

    for fname in ("metrics.json", "history.json", "validation_report.json", "split.json", "operating_point.json",
                  quality.OUTPUTS_FILE):
        if (out_dir / fname).exists():
            mlflow.log_artifact(str(out_dir / fname), artifact_path="reports")
    for plot in result.plots or []:
        mlflow.log_artifact(str(plot), artifact_path="plots")
    return fingerprint


def _register_trained(client, name: str, result, metrics: dict, params: Params, run_id: str, data_root: Path,
                      data_version: str | None, fingerprint: str, commit: str, trigger: str):
    """Register the run's checkpoint as a new version with its scores and model card."""
    import mlflow

    image_size = params.preprocess.image_size
    mv = _register(client, name, Path(result.checkpoint), run_id, _example_bytes(data_root, image_size), {
        "data.version": data_version or "none", "data.fingerprint": fingerprint or "none",
        "git_commit": commit, "trigger": trigger,
    }, data_root=data_root, calibration=[s.path for s in result.splits.train] if result.splits else None)
    log_version_scores(client, name, int(mv.version), {f"test.{k}": metrics[k] for k in METRIC_KEYS
                                                      if k in metrics})
    mlflow.set_tags({"registered_model": name, "registered_version": str(mv.version)})
    counts = (result.dataset or {}).get("counts") or {}
    client.update_model_version(name, str(mv.version), description=model_card.render(
        mv.version, metrics, params, data_version or fingerprint or "unknown", counts))
    return mv


def register_checkpoint(checkpoint, params: Params, run_name: str | None = None, tags: dict | None = None,
                        metrics: dict | None = None, data_root=None, calibration: list[Path] | None = None,
                        alias: bool = True) -> dict:
    """Log an existing model.pt as a run + new registered version (alias `challenger`; alias=False: none).

    For models trained elsewhere (and for tests/benchmarks: degraded models). No training.
    calibration: training X-rays for the int8 copy (None: the version gets none).
    """
    import mlflow

    uri = check_server()
    client = connect(uri)
    name = model_name(params)
    mlflow.set_experiment(params.registry.experiment)
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    tags.setdefault("trigger", "import")
    with mlflow.start_run(run_name=run_name or _run_name(None, tags["trigger"]), tags=tags) as run:
        _log_params(params)
        if metrics:
            mlflow.log_metrics({f"test_{k}": float(v) for k, v in metrics.items() if finite(v)})
        example = _example_bytes(Path(data_root), params.preprocess.image_size) if data_root else None
        mv = _register(client, name, Path(checkpoint), run.info.run_id, example, {"trigger": tags["trigger"]},
                       data_root=Path(data_root) if data_root else None, calibration=calibration, alias=alias)
    return {"run_id": run.info.run_id, "version": int(mv.version), "model_name": name,
            "model_uri": f"models:/{name}/{mv.version}"}


def register_operating_point(checkpoint: Path, parent_dir: Path, params: Params, tags: dict[str, str],
                             metrics: dict[str, float], description: str, name: str | None = None) -> int:
    """A new version with a parent version's weights and ONNX files (the network is the same) and a
    new checkpoint carrying another calibration and threshold. It does not take the alias challenger
    (that is a trained candidate's). Returns its number."""
    import mlflow

    client = connect(check_server())
    name = model_name(params, name)
    mlflow.set_experiment(params.registry.experiment)
    with mlflow.start_run(run_name=f"{tags.get('trigger', 'site-adapt')}-{now()}", tags=tags) as run:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if finite(v)})
        mv = _register(client, name, Path(checkpoint), run.info.run_id, None, tags, exported=parent_dir, alias=False)
    client.update_model_version(name, str(mv.version), description=description)
    return int(mv.version)
