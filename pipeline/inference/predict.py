"""Inference: a trained model loaded once, answering for image bytes, paths or decoded images.

Runs in float32 so that the probability a doctor sees is the one evaluation measured. The
checkpoint carries everything the answer depends on besides the weights: input size, intensity
normalisation, calibration (Platt a, b: the probability shown is calibrated) and the threshold
(on that calibrated probability). Checkpoints from before calibration existed load as identity.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.settings import config
from pipeline.inference import gate
from pipeline.data import preprocess
from pipeline.model.calibration import Calibration
from pipeline.model.network import build_model, head, last_stage, load_checkpoint, logits_and_features


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


class Predictor:
    def __init__(self, model: torch.nn.Module, image_size: int, threshold: float, metadata: dict | None = None,
                 device: str | None = None, *, intensity: str, calibration: Calibration | None = None):
        # intensity has no default: a model trained on equalised films and fed raw ones answers
        # plausibly and wrongly (a benchmark probe did, until 2026-11-24).
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.image_size = int(image_size)
        self.threshold = float(threshold)
        self.metadata = metadata or {}
        self.intensity = intensity
        self.calibration = calibration or Calibration()
        self.gate = gate.Gate(self.metadata.get("gate"))  # old checkpoints: cheap checks only
        self.engine = None  # pipeline.inference.engine.FastEngine where the site switched it on; None: float32 torch

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None) -> "Predictor":
        ckpt = load_checkpoint(path)
        model = build_model("scratch")
        model.load_state_dict(ckpt["state_dict"])
        meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
        return cls(model, ckpt["image_size"], ckpt["threshold"], meta, device,
                   intensity=ckpt.get("intensity", "none"), calibration=Calibration.from_dict(ckpt.get("calibration")))

    @property
    def engine_name(self) -> str:
        return f"openvino-{self.engine.precision}" if self.engine is not None else "torch-fp32"

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

    def forward(self, arrays: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, S, S] -> (logits float64 [N], pooled features float32 [N, 512]): every
        inference goes through here, by the fast engine when one is set, else float32 torch."""
        if self.engine is not None:
            return self.engine.forward(arrays, batch_size)
        return self.reference_forward(arrays, batch_size)

    @torch.inference_mode()
    def reference_forward(self, arrays: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """forward() in float32 torch: what training and evaluation measured."""
        logits, feats = [], []
        for i in range(0, len(arrays), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(arrays[i:i + batch_size])).to(self.device).unsqueeze(1)
            x = preprocess.model_input(x, self.intensity).contiguous(memory_format=torch.channels_last)
            logit, feat = logits_and_features(self.model, x)
            logits.append(logit.float().cpu())
            feats.append(feat.float().cpu())
        if not logits:
            return np.zeros(0, np.float64), np.zeros((0, 0), np.float32)
        return torch.cat(logits).numpy().astype(np.float64), torch.cat(feats).numpy()

    def gradcam(self, img: Image.Image) -> tuple[Prediction, np.ndarray]:
        """Prediction and Grad-CAM heat map (float32 [S, S] in [0, 1]) of the last residual stage:
        where the evidence for PNEUMONIA lies (for a NORMAL answer: what argued against it least)."""
        return self.gradcam_features(img)[:2]

    def gradcam_features(self, img: Image.Image) -> tuple[Prediction, np.ndarray, np.ndarray]:
        """gradcam(), and the pooled features [1, 512] of the same pass for the input gate."""
        arr = preprocess.to_array(img, self.image_size)
        x = preprocess.to_tensor(arr, self.intensity).unsqueeze(0).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.enable_grad():
            x.requires_grad_(True)
            stage = last_stage(self.model, x)
            logit, feats = head(self.model, stage)
            grad = torch.autograd.grad(logit[0], stage)[0]
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * stage).sum(dim=1, keepdim=True))
        cam = torch.nn.functional.interpolate(cam, size=arr.shape, mode="bilinear", align_corners=False)[0, 0]
        cam = cam.detach().cpu().numpy()
        cam = cam / cam.max() if cam.max() > 0 else cam
        prediction = self.decide(float(logit[0].detach()))
        return prediction, cam.astype(np.float32), feats.detach().float().cpu().numpy()
