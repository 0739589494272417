"""What every model that answers shares, whatever runs its network: the stored threshold, the
calibration and the input gate, applied to the network's raw outputs.

Two networks answer through it: pipeline.inference.predict.Predictor (float32 PyTorch: training,
evaluation, the pyfunc, the CLI; the reference) and pipeline.inference.served.ServedModel (the
version's ONNX file in OpenVINO: the site, the API and the PACS worker, without torch).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from pipeline.inference import gate
from pipeline.model.calibration import Calibration
from pipeline.settings import config


@dataclass
class Prediction:
    label: str            # NORMAL or PNEUMONIA
    probability: float    # P(pneumonia)
    threshold: float      # PNEUMONIA when probability >= threshold
    warning: str = ""     # the input gate's caution (e.g. a lateral view), "" when none
    gate_score: float | None = None  # feature distance to the training X-rays (pipeline.inference.gate)
    logit: float | None = None       # the network's raw output: refitting a site's calibration needs no image

    def to_dict(self) -> dict:
        return asdict(self)


class NonFiniteOutput(RuntimeError):
    """The model answered NaN or inf: a broken model, never a diagnosis (NaN >= t is False, which
    used to read as NORMAL)."""


class Decisions:
    """The decision rule around a network; subclasses give `forward` and `gradcam_features`."""

    engine_name = "?"

    def __init__(self, image_size: int, threshold: float, metadata: dict | None = None, *, intensity: str,
                 calibration: Calibration | None = None):
        # intensity has no default: a model trained on equalised films and fed raw ones answers
        # plausibly and wrongly (a benchmark probe did, until 2026-11-24).
        self.image_size = int(image_size)
        self.threshold = float(threshold)
        self.metadata = metadata or {}
        self.intensity = intensity
        self.calibration = calibration or Calibration()
        self.gate = gate.Gate(self.metadata.get("gate"))  # old checkpoints: cheap checks only

    def forward(self, arrays: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, S, S] -> (logits float64 [N], pooled features float32 [N, 512])."""
        raise NotImplementedError

    def gradcam_features(self, img: Image.Image) -> tuple[Prediction, np.ndarray, np.ndarray]:
        """(Prediction, heat map float32 [S, S] in [0, 1], pooled features [1, 512]) of one image."""
        raise NotImplementedError

    def label_for(self, probability: float) -> Prediction:
        """The decision rule: PNEUMONIA when P(pneumonia) >= the stored threshold."""
        if not np.isfinite(probability):
            raise NonFiniteOutput(f"model output is {probability}: no label given")
        return Prediction(config.CLASSES[int(probability >= self.threshold)], float(probability), self.threshold)

    def decide(self, logit: float) -> Prediction:
        """The raw logit -> calibrated probability -> label at the stored threshold."""
        prediction = self.label_for(float(self.calibration.probability(np.array([logit]))[0]))
        prediction.logit = float(logit)
        return prediction

    def logit_features(self, arr: np.ndarray) -> tuple[float, np.ndarray]:
        """One uint8 [S, S] image -> (raw logit, pooled features [1, D] for the input gate)."""
        logits, feats = self.forward(arr[None])
        return float(logits[0]), feats

    def judged(self, prediction: Prediction, arr: np.ndarray, feats, warnings=()) -> Prediction:
        verdict = self.gate.assess(arr, feats, warnings)  # raises gate.NotAChestXray
        prediction.warning, prediction.gate_score = verdict.warning, verdict.score
        return prediction

    def probabilities(self, arrays: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 [N, S, S] -> calibrated P(pneumonia) [N]."""
        return self.calibration.probability(self.logits(arrays, batch_size))

    def logits(self, arrays: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 [N, S, S] -> the network's raw logits [N] (before calibration)."""
        return self.forward(arrays, batch_size)[0]

    def gradcam(self, img: Image.Image) -> tuple[Prediction, np.ndarray]:
        """Prediction and heat map (float32 [S, S] in [0, 1]) of the last residual stage: where the
        evidence for PNEUMONIA lies (for a NORMAL answer: what argued against it least)."""
        return self.gradcam_features(img)[:2]
