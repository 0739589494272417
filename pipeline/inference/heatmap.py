"""The heat map from the network's class activation map, in numpy (the serving tier has no torch).

For this ResNet the head is global average pooling followed by one linear layer, so the gradient
of the logit with respect to the last stage's activations A[c, i, j] is w[c] / (s * s) everywhere:
Grad-CAM's channel weights are the head's weights divided by a constant. Grad-CAM
relu(sum_c w[c] / s^2 * A[c]), upsampled and divided by its maximum, is therefore exactly the class
activation map relu(sum_c w[c] * A[c]) treated the same way. The exported graph outputs that map
(pipeline.inference.onnx_export); registration checks it against PyTorch's Grad-CAM.
"""
from __future__ import annotations

import numpy as np


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] interpolation matrix of torch's bilinear resize with align_corners=False."""
    m = np.zeros((n_out, n_in), np.float32)
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)  # torch clamps below 0
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(np.float32)
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def from_activation_map(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Class activation map [s, s] -> heat map float32 `shape` in [0, 1] (0 everywhere when nothing
    argues for PNEUMONIA): relu, bilinear upsampling, divided by the maximum."""
    cam = np.maximum(np.asarray(cam, np.float32), 0)
    up = _bilinear_weights(cam.shape[0], shape[0]) @ cam @ _bilinear_weights(cam.shape[1], shape[1]).T
    top = up.max()
    return (up / top if top > 0 else up).astype(np.float32)
