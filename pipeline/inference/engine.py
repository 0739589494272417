"""The site's fast inference path, used only where it was shown to change no decision that matters.

The fast path runs the version's own ONNX files (`pipeline.inference.onnx_export`, the files hospitals get)
compiled by OpenVINO: the int8 copy, or the float32 file in bfloat16 where the CPU has it
(AVX-512 BF16 / AMX), float32 otherwise. Measured on 2 cores of a Xeon with AMX
(benchmarks/bench_engines.py): a 160 px ResNet18 forward pass of eight images takes 62 ms in
PyTorch float32, 11 ms in OpenVINO bf16 and 7.2 ms in int8; one image 11.8, 3.0 and 2.1 ms.

Decision: the float32 PyTorch network stays the reference (training, evaluation, the pyfunc,
Grad-CAM). When the DAG evaluates a new version, `check` scores the fast path against that
reference on the held-out patients and every stress shift, int8 first, then bf16/f32; a
precision passes only if the labels agree on >= MIN_LABEL_AGREEMENT of the images, the AUC moves
by <= MAX_AUC_DELTA, the calibration error grows by <= MAX_ECE_INCREASE and the input gate
refuses the same images (>= MIN_LABEL_AGREEMENT). The version is tagged `fast_path=on` with the
first precision that passes; the site uses the fast path for versions tagged `on`, at that
precision; any other version is served by the reference.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from pipeline.model import calibration
from pipeline.evaluation import evaluate
from pipeline.data import preprocess

MIN_LABEL_AGREEMENT = 0.995
MAX_AUC_DELTA = 0.002
MAX_ECE_INCREASE = 0.01   # the confidence doctors see stays calibrated (int8 moves a few P by ~0.1)


def cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class FastEngine:
    """An ONNX file compiled by OpenVINO; `forward` has `Predictor.forward`'s contract.
    precision: "int8" for the int8 copy (its other operators in bf16 where the CPU has it),
    "bf16" or "f32" for the float32 file; None: bf16 where the CPU has it, else f32."""

    def __init__(self, onnx_path: str | Path, intensity: str, precision: str | None = None, threads: int = 0):
        import openvino as ov

        core = ov.Core()
        native = "bf16" if cpu_has_bf16() else "f32"
        self.precision = precision or native
        config = {"INFERENCE_PRECISION_HINT": native if self.precision == "int8" else self.precision,
                  "PERFORMANCE_HINT": "LATENCY"}
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


def agreement(predictor, reference: tuple, fast: tuple, labels: np.ndarray) -> dict:
    """The fast path's (logits, features) against predictor's float32 reference on the same images."""
    (ref_logits, ref_feats), (fast_logits, fast_feats) = reference, fast
    p_ref, p_fast = predictor.calibration.probability(ref_logits), predictor.calibration.probability(fast_logits)
    t = predictor.threshold
    out = {"n": int(len(ref_logits)), "label_agreement": float(((p_ref >= t) == (p_fast >= t)).mean()),
           "max_abs_probability_diff": float(np.abs(p_ref - p_fast).max()) if len(ref_logits) else 0.0}
    if predictor.gate.learned:
        out["gate_agreement"] = float((predictor.gate.refused(ref_feats) == predictor.gate.refused(fast_feats)).mean())
    if len(set(labels.tolist())) == 2:
        out["auc_reference"], out["auc_fast"] = evaluate.roc_auc(labels, p_ref), evaluate.roc_auc(labels, p_fast)
        out["auc_delta"] = abs(out["auc_fast"] - out["auc_reference"])
        out["ece_reference"], out["ece_fast"] = calibration.ece(labels, p_ref), calibration.ece(labels, p_fast)
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
        if r.get("ece_fast", 0.0) - r.get("ece_reference", 0.0) > MAX_ECE_INCREASE:
            return False, (f"{name}: calibration error grows from {r['ece_reference']:.4f} to {r['ece_fast']:.4f} "
                           f"(> +{MAX_ECE_INCREASE})")
    return True, "labels, AUC, calibration and gate agree with the float32 reference"


def check(predictor, onnx_path: str | Path, sets: dict[str, tuple[np.ndarray, np.ndarray]],
          int8_path: str | Path | None = None, batch_size: int = 64) -> dict:
    """Agreement on each named (images, labels) set for the int8 copy (when there is one), then
    the float32 file at the CPU's precision; the first that passes is the verdict. `tried` keeps
    each precision's verdict, `sets` the figures of the one chosen (or of the last tried)."""
    reference = {name: predictor.reference_forward(arrays, batch_size) for name, (arrays, _) in sets.items()}
    engines = ([(int8_path, "int8")] if int8_path is not None else []) + [(onnx_path, None)]
    tried = {}
    for path, precision in engines:
        engine = FastEngine(path, predictor.intensity, precision)
        reports = {name: agreement(predictor, reference[name], engine.forward(arrays, batch_size), labels)
                   for name, (arrays, labels) in sets.items()}
        ok, why = verdict(reports)
        tried[engine.precision] = {"ok": ok, "reason": why}
        if ok:
            break
    reason = "; ".join(f"{p}: {t['reason']}" for p, t in tried.items())
    return {"ok": ok, "reason": reason, "precision": engine.precision, "sets": reports, "tried": tried}
