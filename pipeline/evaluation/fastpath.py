"""The fast-path check: the fast engine may answer doctors only where it changes no decision that matters.

Decision: the float32 PyTorch network stays the reference (training, evaluation, the pyfunc).
When the DAG evaluates a new version, `check` scores the fast engine
(pipeline.inference.engine) against that reference on the held-out patients and every stress
shift, int8 first, then bf16/f32; a precision passes only if the labels agree on >=
MIN_LABEL_AGREEMENT of the images, the AUC moves by <= MAX_AUC_DELTA, the calibration error grows
by <= MAX_ECE_INCREASE and the input gate refuses the same images (>= MIN_LABEL_AGREEMENT). The
version is tagged `fast_path=on` with the first precision that passes; the site uses the fast path
for versions tagged `on`, at that precision; any other version is served from its float32 ONNX
file in float32 (equal to the reference within onnx_export's tolerances; the site has no torch).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.model import calibration
from pipeline.evaluation import evaluate
from pipeline.inference.engine import FastEngine

MIN_LABEL_AGREEMENT = 0.995

MAX_AUC_DELTA = 0.002

MAX_ECE_INCREASE = 0.01   # the confidence doctors see stays calibrated (int8 moves a few P by ~0.1)



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
          int8_path: str | Path | None = None, batch_size: int = 64,
          reference: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Agreement on each named (images, labels) set for the int8 copy (when there is one), then
    the float32 file at the CPU's precision; the first that passes is the verdict. `tried` keeps
    each precision's verdict, `sets` the figures of the one chosen (or of the last tried).
    reference: predictor.forward of each set when the caller already has it (else computed here)."""
    reference = reference or {name: predictor.forward(arrays, batch_size) for name, (arrays, _) in sets.items()}
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

