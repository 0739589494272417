"""The MLflow pyfunc model: `pipeline.inference.predict.Predictor` packaged so that MLflow can serve it.

Input: a pandas DataFrame with one column, `image`, one row per X-ray. Each cell holds the raw file
bytes (JPEG, PNG, ... exactly what a doctor uploads). A `str` cell is read as base64 of those bytes:
that is what JSON carries, and what `mlflow models serve` hands over when a client sends

    POST /invocations  {"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}

(with the model's signature, MLflow's scoring server base64-decodes the `binary` column itself).

Output: a DataFrame, one row per input row, columns
    probability  float  P(pneumonia), NaN when the image was rejected
    label        str    "PNEUMONIA" | "NORMAL" ("" when rejected)
    threshold    float  the decision threshold stored with the model (probability >= threshold)
    error        str    "" or why the image was rejected ("not an image", "truncated", ...,
                        "this does not look like a frontal chest radiograph: ..." from pipeline.inference.gate)
    warning      str    "" or a caution about an answered image (e.g. a lateral DICOM view)
    gate_score   float  the gate's feature distance to the training X-rays (None: refused or no gate)
One bad upload therefore never fails the other rows of a batch.

There is no second copy of preprocessing here: decoding, validation, resizing and normalisation are
`pipeline.data.preprocess` via `Predictor`, the very code used by training and Django. The `pipeline`
package is logged with the model (`code_paths`), so the served model needs no project checkout.
"""
from __future__ import annotations

import base64
import binascii
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipeline.data.preprocess import InvalidImage
from pipeline.inference.answer import answer
from pipeline.inference import onnx_export
from pipeline.inference.predict import Predictor
from pipeline.model import artifacts
from pipeline.model.network import load_checkpoint

INPUT_COLUMN = "image"
OUTPUT_COLUMNS = ("probability", "label", "threshold", "error", "warning", "gate_score")


def _as_bytes(value) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"'{INPUT_COLUMN}' string is not base64: {exc}") from exc
    raise TypeError(f"'{INPUT_COLUMN}' must hold bytes or base64 text, got {type(value).__name__}")


with warnings.catch_warnings():
    # MLflow nags about type hints on predict(); the explicit signature below does the validating.
    warnings.filterwarnings("ignore", message=".*type hint.*", category=UserWarning)

    class XrayModel(mlflow.pyfunc.PythonModel):
        """Pneumonia classifier: raw image bytes in, probability + label + threshold out."""

        def load_context(self, context):
            self.predictor = Predictor.from_checkpoint(context.artifacts[artifacts.CHECKPOINT_KEY], device="cpu")

        def predict(self, context, model_input, params=None):
            if isinstance(model_input, pd.DataFrame):
                if INPUT_COLUMN not in model_input.columns:
                    raise ValueError(f"input DataFrame needs a column '{INPUT_COLUMN}' (raw image bytes)")
                cells = list(model_input[INPUT_COLUMN])
            elif isinstance(model_input, (bytes, str)):
                cells = [model_input]
            else:
                cells = list(model_input)
            rows = []
            threshold = float(self.predictor.threshold)
            for cell in cells:
                try:
                    pred = answer(_as_bytes(cell), self.predictor).prediction
                except (InvalidImage, TypeError, ValueError) as exc:
                    reason = getattr(exc, "reason", None) or str(exc)
                    rows.append({"probability": float("nan"), "label": "", "threshold": threshold, "error": reason,
                                 "warning": "", "gate_score": getattr(exc, "score", None)})
                    continue
                rows.append({"probability": float(pred.probability), "label": pred.label,
                             "threshold": float(pred.threshold), "error": "", "warning": pred.warning,
                             "gate_score": pred.gate_score})
            out = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
            # rejected rows: probability None (JSON null; NaN is not valid JSON for most clients)
            for col in ("probability", "gate_score"):
                out[col] = out[col].astype(object).where(out[col].notna(), None)
            return out


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", INPUT_COLUMN)]),
        outputs=Schema([ColSpec("double", "probability"), ColSpec("string", "label"),
                        ColSpec("double", "threshold"), ColSpec("string", "error"),
                        ColSpec("string", "warning"), ColSpec("double", "gate_score", required=False)]),
    )


def pip_requirements() -> list[str]:
    """Exact versions of what the model imports (given explicitly: inferring them would load the
    model in a subprocess, seconds of work on every run)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    # pydicom and the pylibjpeg decoders: without them the served model refuses the compressed
    # DICOMs (JPEG extended/lossless, JPEG-LS, JPEG 2000, RLE) that hospital archives send.
    for dist in ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "pyyaml", "pydicom",
                 "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            pass
    return reqs


def _pipeline_source(dest: Path) -> Path:
    """A clean copy of the `pipeline` package (sources only, no __pycache__) to log as code."""
    src = Path(__file__).resolve().parents[1]  # the whole `pipeline` package
    target = dest / "pipeline"
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def log_pyfunc(checkpoint: str | Path, input_example: bytes | None = None, name: str = "model",
               onnx: str | Path | None = None, onnx_int8: str | Path | None = None,
               **kwargs) -> "mlflow.models.model.ModelInfo":
    """Log the checkpoint (and its ONNX export and int8 copy, pipeline.inference.onnx_export) as a pyfunc
    model under the active run (kwargs go to log_model, e.g. registered_model_name, tags, params)."""
    files = {artifacts.CHECKPOINT_KEY: str(checkpoint)}
    for key, path in ((artifacts.ONNX_KEY, onnx), (artifacts.ONNX_INT8_KEY, onnx_int8)):
        if path is not None:
            files[key] = str(path)
    with tempfile.TemporaryDirectory(prefix="xray-pyfunc-") as tmp:
        # what the serving tier reads beside the ONNX file, from this very checkpoint (a site's
        # operating point re-uses the graph with another threshold and calibration)
        files[artifacts.SERVING_KEY] = str(Path(tmp) / artifacts.SERVING_FILE)
        Path(files[artifacts.SERVING_KEY]).write_text(json.dumps(onnx_export.serving(load_checkpoint(checkpoint))))
        code = _pipeline_source(Path(tmp))
        example = pd.DataFrame({INPUT_COLUMN: [input_example]}) if input_example is not None else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*type hint.*", category=UserWarning)
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=XrayModel(),
                artifacts=files,
                code_paths=[str(code)],
                signature=signature(),
                input_example=example,
                pip_requirements=pip_requirements(),
                **kwargs,
            )

