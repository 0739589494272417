"""The reference network: a trained checkpoint in float32 PyTorch (training, evaluation, the
pyfunc, the CLI). The site answers from the same version's ONNX file (pipeline.inference.served);
registration checks that both compute the same logits, features and heat map.

Runs in float32 so that the probability a doctor sees is the one evaluation measured. The
checkpoint carries everything the answer depends on besides the weights: input size, intensity
normalisation, calibration (Platt a, b: the probability shown is calibrated) and the threshold
(on that calibrated probability). Checkpoints from before calibration existed load as identity.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.data import preprocess
from pipeline.inference.decision import Decisions, Prediction
from pipeline.model.calibration import Calibration
from pipeline.model.network import build_model, head, last_stage, load_checkpoint, logits_and_features


class Predictor(Decisions):
    engine_name = "torch-fp32"

    def __init__(self, model: torch.nn.Module, image_size: int, threshold: float, metadata: dict | None = None,
                 device: str | None = None, *, intensity: str, calibration: Calibration | None = None):
        super().__init__(image_size, threshold, metadata, intensity=intensity, calibration=calibration)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None) -> "Predictor":
        ckpt = load_checkpoint(path)
        model = build_model("scratch")
        model.load_state_dict(ckpt["state_dict"])
        meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
        return cls(model, ckpt["image_size"], ckpt["threshold"], meta, device,
                   intensity=ckpt.get("intensity", "none"), calibration=Calibration.from_dict(ckpt.get("calibration")))

    @torch.inference_mode()
    def forward(self, arrays: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, S, S] -> (logits float64 [N], pooled features float32 [N, 512]) in float32 torch."""
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

    def gradcam_features(self, img: Image.Image) -> tuple[Prediction, np.ndarray, np.ndarray]:
        """Grad-CAM of the last residual stage (its gradient-weighted activations), and the pooled
        features [1, 512] of the same pass for the input gate."""
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
