"""Inference: a trained model loaded once, answering for image bytes, paths or decoded images.

Runs in float32 so that the probability a doctor sees is the one evaluation measured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline import config, preprocess
from pipeline.model import build_model, load_checkpoint


@dataclass
class Prediction:
    label: str            # NORMAL or PNEUMONIA
    probability: float    # P(pneumonia)
    threshold: float      # PNEUMONIA when probability >= threshold

    def to_dict(self) -> dict:
        return asdict(self)


class Predictor:
    def __init__(self, model: torch.nn.Module, image_size: int, threshold: float, metadata: dict | None = None,
                 device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.image_size = int(image_size)
        self.threshold = float(threshold)
        self.metadata = metadata or {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None) -> "Predictor":
        ckpt = load_checkpoint(path)
        model = build_model("scratch")
        model.load_state_dict(ckpt["state_dict"])
        meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
        return cls(model, ckpt["image_size"], ckpt["threshold"], meta, device)

    def label_for(self, probability: float) -> Prediction:
        """The decision rule: PNEUMONIA when P(pneumonia) >= the stored threshold."""
        return Prediction(config.CLASSES[int(probability >= self.threshold)], float(probability), self.threshold)

    def predict(self, source: bytes | str | Path) -> Prediction:
        """Raises preprocess.InvalidImage for anything that is not a usable X-ray."""
        return self.label_for(self.probabilities(preprocess.load_array(source, self.image_size)[None])[0])

    def predict_image(self, img: Image.Image) -> Prediction:
        return self.label_for(self.probabilities(preprocess.to_array(img, self.image_size)[None])[0])

    def predict_batch(self, sources) -> list[Prediction]:
        arrays = np.stack([preprocess.load_array(s, self.image_size) for s in sources])
        return [self.label_for(p) for p in self.probabilities(arrays)]

    @torch.inference_mode()
    def probabilities(self, arrays: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 [N, S, S] -> P(pneumonia) [N]."""
        out = []
        for i in range(0, len(arrays), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(arrays[i:i + batch_size])).to(self.device)
            x = preprocess.normalize(x).unsqueeze(1).contiguous(memory_format=torch.channels_last)
            out.append(torch.sigmoid(self.model(x).float()).squeeze(1).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, np.float32)

    def gradcam(self, img: Image.Image) -> tuple[Prediction, np.ndarray]:
        """Prediction and Grad-CAM heat map (float32 [S, S] in [0, 1]) of the last residual stage:
        where the evidence for PNEUMONIA lies (for a NORMAL answer: what argued against it least)."""
        arr = preprocess.to_array(img, self.image_size)
        x = preprocess.to_tensor(arr).unsqueeze(0).to(self.device).contiguous(memory_format=torch.channels_last)
        saved = {}
        layer = self.model.layer4
        handle = layer.register_forward_hook(lambda m, i, o: saved.update(act=o))
        try:
            with torch.enable_grad():
                x.requires_grad_(True)
                logit = self.model(x)[0, 0]
                grad = torch.autograd.grad(logit, saved["act"])[0]
        finally:
            handle.remove()
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * saved["act"]).sum(dim=1, keepdim=True))
        cam = torch.nn.functional.interpolate(cam, size=arr.shape, mode="bilinear", align_corners=False)[0, 0]
        cam = cam.detach().cpu().numpy()
        cam = cam / cam.max() if cam.max() > 0 else cam
        return self.label_for(float(torch.sigmoid(logit.detach()))), cam.astype(np.float32)
