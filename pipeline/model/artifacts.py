"""The files inside a registered version: their names live here and nowhere else.

A registered version is an MLflow pyfunc directory (pipeline.mlops.pyfunc logs it):

    MLmodel, python_model.pkl, code/pipeline/...   MLflow's own files and the code it runs
    artifacts/model.pt                             the torch checkpoint (weights, threshold, calibration, gate)
    artifacts/model.onnx                           the same network for other runtimes (pipeline.inference.onnx_export)
    artifacts/model_int8.onnx                      its int8 copy, served when the fast-path check passed
    artifacts/serving.json                         threshold, calibration, gate, size: what serving reads
                                                   beside the ONNX file (the checkpoint without weights)

Every consumer (the site, the CLI, candidates, the pyfunc) finds a file through `checkpoint_in`
and `onnx_in`, so the layout can change in one place (as a MONAI bundle fixes its own in a spec).
"""
from __future__ import annotations

from pathlib import Path

CHECKPOINT_FILE = "model.pt"
ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_int8.onnx"
SERVING_FILE = "serving.json"
# keys of the pyfunc's `artifacts` (MLflow copies each file into <model>/artifacts/ under its own name)
CHECKPOINT_KEY, ONNX_KEY, ONNX_INT8_KEY, SERVING_KEY = "checkpoint", "onnx", "onnx_int8", "serving"
MODEL_ARTIFACT = "model"  # the logged model's name inside its run (runs:/<id>/model)


def checkpoint_in(model_dir: str | Path) -> Path:
    """Path of the torch checkpoint inside a downloaded pyfunc model directory."""
    found = sorted(Path(model_dir).glob("artifacts/*.pt"))
    if not found:
        raise FileNotFoundError(f"no checkpoint (artifacts/*.pt) in model directory {model_dir}")
    return found[0]


def onnx_in(model_dir: str | Path, int8: bool = False) -> Path | None:
    """Path of the ONNX export (int8: its int8 copy) inside a downloaded pyfunc model directory
    (None: a version without it)."""
    path = Path(model_dir) / "artifacts" / (ONNX_INT8_FILE if int8 else ONNX_FILE)
    return path if path.is_file() else None


def serving_in(model_dir: str | Path) -> Path | None:
    """Path of serving.json inside a downloaded pyfunc model directory (None: registered before it)."""
    path = Path(model_dir) / "artifacts" / SERVING_FILE
    return path if path.is_file() else None
