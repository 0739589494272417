"""The site's fast inference path, used only where it was shown to change no decision that matters.

The fast path runs the version's own ONNX file (`pipeline.onnx_export`, the file hospitals get)
compiled by OpenVINO, in bfloat16 where the CPU has it (AVX-512 BF16 / AMX), float32 otherwise.
Measured on 2 cores (docs/web.md "Which model answers"; docs/benchmarks.md): a 160 px ResNet18
forward pass of one image takes ~2 ms in OpenVINO bf16 against ~10 ms in PyTorch eager float32,
~15 vs ~35 ms for eight.

Decision: the float32 PyTorch network stays the reference (training, evaluation, the pyfunc,
Grad-CAM). When the DAG evaluates a new version, `check` scores the fast path against that
reference on the held-out patients and every stress shift; the version is tagged
`fast_path=on` only if the labels agree on >= MIN_LABEL_AGREEMENT of the images, the AUC moves by
<= MAX_AUC_DELTA and the input gate refuses the same images (>= MIN_LABEL_AGREEMENT). The site
uses the fast path for versions tagged `on`, at the precision that was checked; any other version
is served by the reference.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from pipeline import evaluate, preprocess

MIN_LABEL_AGREEMENT = 0.995
MAX_AUC_DELTA = 0.002


def cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class FastEngine:
    """An ONNX file compiled by OpenVINO; `forward` has `Predictor.forward`'s contract."""

    def __init__(self, onnx_path: str | Path, intensity: str, precision: str | None = None, threads: int = 0):
        import openvino as ov

        core = ov.Core()
        self.precision = precision or ("bf16" if cpu_has_bf16() else "f32")
        config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.intensity = intensity
        self._lock = threading.Lock()  # one infer request: one call at a time

    def forward(self, arrays: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, S, S] -> (logits float64 [N], pooled features float32 [N, 512])."""
        logits, feats = [], []
        for i in range(0, len(arrays), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(arrays[i:i + batch_size]))[:, None]
            x = preprocess.model_input(chunk, self.intensity).numpy()
            with self._lock:
                out = self.request.infer({0: x})
                logits.append(np.array(out[0], np.float64).reshape(-1))
                feats.append(np.array(out[1], np.float32))
        if not logits:
            return np.zeros(0, np.float64), np.zeros((0, 0), np.float32)
        return np.concatenate(logits), np.concatenate(feats)


def agreement(predictor, engine: FastEngine, arrays: np.ndarray, labels: np.ndarray, batch_size: int = 64) -> dict:
    """The fast path against predictor's float32 reference on the same uint8 images."""
    ref_logits, ref_feats = predictor.reference_forward(arrays, batch_size)
    fast_logits, fast_feats = engine.forward(arrays, batch_size)
    p_ref, p_fast = predictor.calibration.probability(ref_logits), predictor.calibration.probability(fast_logits)
    t = predictor.threshold
    out = {"n": int(len(arrays)), "label_agreement": float(((p_ref >= t) == (p_fast >= t)).mean()),
           "max_abs_probability_diff": float(np.abs(p_ref - p_fast).max()) if len(arrays) else 0.0}
    if predictor.gate.learned:
        out["gate_agreement"] = float((predictor.gate.refused(ref_feats) == predictor.gate.refused(fast_feats)).mean())
    if len(set(labels.tolist())) == 2:
        out["auc_reference"], out["auc_fast"] = evaluate.roc_auc(labels, p_ref), evaluate.roc_auc(labels, p_fast)
        out["auc_delta"] = abs(out["auc_fast"] - out["auc_reference"])
    return out


def verdict(reports: dict[str, dict]) -> tuple[bool, str]:
    """(fast path allowed, why) from agreement reports of several image sets."""
    for name, r in reports.items():
        if r["label_agreement"] < MIN_LABEL_AGREEMENT:
            return False, f"{name}: labels agree on {r['label_agreement']:.2%} (< {MIN_LABEL_AGREEMENT:.1%})"
        if r.get("gate_agreement", 1.0) < MIN_LABEL_AGREEMENT:
            return False, f"{name}: gate agrees on {r['gate_agreement']:.2%} (< {MIN_LABEL_AGREEMENT:.1%})"
        if r.get("auc_delta", 0.0) > MAX_AUC_DELTA:
            return False, f"{name}: AUC moves by {r['auc_delta']:.4f} (> {MAX_AUC_DELTA})"
    return True, "labels, AUC and gate agree with the float32 reference"


def check(predictor, onnx_path: str | Path, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Agreement on each named (images, labels) set, pooled over the stress shifts, and the verdict."""
    engine = FastEngine(onnx_path, predictor.intensity)
    reports = {name: agreement(predictor, engine, arrays, labels) for name, (arrays, labels) in sets.items()}
    ok, why = verdict(reports)
    return {"ok": ok, "reason": why, "precision": engine.precision, "sets": reports}
