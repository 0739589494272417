"""A registered version as the site serves it: its ONNX file in OpenVINO, without torch.

The site, the API and the PACS worker answer through `ServedModel`: the graph gives the logit, the
pooled features (the input gate) and the class activation map (the heat map,
pipeline.inference.heatmap); `serving.json` beside it gives the threshold, the calibration and the
gate (pipeline.inference.onnx_export.serving). Registration checked that the graph computes what
the float32 PyTorch network computes, heat map included; which precision may answer doctors is
the fast-path check's verdict (pipeline.evaluation.fastpath), passed in by the loader.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data import preprocess
from pipeline.inference.decision import Decisions, Prediction
from pipeline.inference.engine import FastEngine
from pipeline.inference.heatmap import from_activation_map
from pipeline.model import artifacts
from pipeline.model.calibration import Calibration


class NotServable(RuntimeError):
    """The version lacks what the serving tier reads (it was registered before the serving tier
    existed, or its files are damaged); `reason` says what."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ServedModel(Decisions):
    def __init__(self, onnx_path: str | Path, serving: dict, precision: str = "f32", threads: int = 0):
        super().__init__(serving["image_size"], serving["threshold"], serving, intensity=serving.get("intensity", "none"),
                         calibration=Calibration.from_dict(serving.get("calibration")))
        self.engine = FastEngine(onnx_path, self.intensity, precision, threads)
        if not self.engine.has_cam:
            raise NotServable(f"{Path(onnx_path).name} has no class activation map output (exported before "
                              f"the serving tier), so no heat map can be drawn from it")

    @classmethod
    def from_dir(cls, model_dir: str | Path, precision: str = "f32", threads: int = 0) -> "ServedModel":
        """A downloaded version directory; precision "int8" runs its int8 copy, else its float32
        file ("f32", or "bf16" where that passed the fast-path check)."""
        serving_file = artifacts.serving_in(model_dir)
        onnx_file = artifacts.onnx_in(model_dir, int8=precision == "int8")
        if serving_file is None or onnx_file is None:
            missing = artifacts.SERVING_FILE if serving_file is None else \
                artifacts.ONNX_INT8_FILE if precision == "int8" else artifacts.ONNX_FILE
            raise NotServable(f"the version has no {missing} (registered before the serving tier)")
        try:
            serving = json.loads(serving_file.read_text())
        except (OSError, ValueError) as exc:
            raise NotServable(f"{serving_file.name} is unreadable: {exc}") from None
        return cls(onnx_file, serving, precision, threads)

    @property
    def engine_name(self) -> str:
        return f"openvino-{self.engine.precision}"

    def forward(self, arrays: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        return self.engine.forward(arrays, batch_size)

    def gradcam_features(self, img: Image.Image) -> tuple[Prediction, np.ndarray, np.ndarray]:
        """The heat map from the graph's class activation map: equal to PyTorch's Grad-CAM
        (pipeline.inference.heatmap says why; registration measures it)."""
        arr = preprocess.to_array(img, self.image_size)
        logit, feats, cam = self.engine.activation_map(arr)
        return self.decide(logit), from_activation_map(cam, arr.shape), feats
