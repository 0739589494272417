"""The network as an ONNX file, so that a hospital can run a registered version in its own runtime.

What the file computes: the normalised model input [N, 1, S, S] (float32, after
`preprocess.model_input`) -> `logit` [N], `features` [N, 512] (the pooled features the input
gate judges) and `cam` [N, s, s] (the class activation map of the last stage, from which the
heat map is drawn without torch: pipeline.inference.heatmap). Decoding, resizing, intensity normalisation, calibration and the threshold stay
outside the graph, as in every runtime's own pre/post-processing; what they need is written into
the file's metadata (`image_size`, `intensity`, `mean`, `std`, `calibration_a/_b`, `threshold`):

    P(pneumonia) = sigmoid(calibration_a * logit + calibration_b);  PNEUMONIA when P >= threshold

`validate` runs the file in ONNX Runtime against PyTorch on real X-rays; registration refuses a
file whose logits differ by more than LOGIT_TOLERANCE (float32 vs float32: ~1e-5 is usual, the
tolerance leaves room for other kernels, and is 1/1000 of a typical decision margin) or whose heat
maps differ from PyTorch's Grad-CAM by more than HEATMAP_TOLERANCE (on the 0..1 scale).

`serving` is the rest of what the serving tier needs (threshold, calibration, gate, size,
intensity): the checkpoint without its weights, as JSON, written beside the graph in every
registered version (a site's operating point changes it, never the graph).

`quantize` writes an int8 copy of the file (NNCF post-training quantization: QuantizeLinear /
DequantizeLinear pairs, which OpenVINO and ONNX Runtime both run as int8 kernels), its activation
ranges calibrated on training X-rays (1.4-1.5x faster than bfloat16 on a Xeon with AMX,
benchmarks/bench_engines.py). It is not validated against a tolerance here: whether it may
answer doctors is decided by the fast-path agreement check (pipeline.inference.engine), on the held-out
patients and every stress shift.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline.data import preprocess
from pipeline.model.network import head, last_stage

OPSET = 18
LOGIT_TOLERANCE = 1e-3
HEATMAP_TOLERANCE = 1e-3
HEATMAP_IMAGES = 8         # validation images whose heat maps are compared with Grad-CAM
CALIBRATION_IMAGES = 300   # training X-rays that set the int8 activation ranges (NNCF's default)
INPUT, OUTPUTS = "image", ("logit", "features", "cam")
SERVING_FORMAT = 1


class OnnxMismatch(RuntimeError):
    """ONNX Runtime and PyTorch disagree beyond the tolerance: the export is not registered."""


class Network(torch.nn.Module):
    """The ResNet18 with three outputs: the logit, the pooled features (for the gate) and the class
    activation map (the last stage's activations weighted by the head's weights)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        stage = last_stage(self.model, x)
        logit, features = head(self.model, stage)
        return logit, features, torch.einsum("nchw,c->nhw", stage, self.model.fc.weight[0])


def serving(checkpoint: dict) -> dict:
    """What the serving tier reads beside the graph: the checkpoint without its weights (JSON)."""
    return {"format": SERVING_FORMAT, **{k: v for k, v in checkpoint.items() if k != "state_dict"}}


def metadata(predictor) -> dict[str, str]:
    """What a runtime needs around the graph (ONNX metadata_props are strings)."""
    return {"image_size": str(predictor.image_size), "intensity": predictor.intensity,
            "mean": str(preprocess.MEAN), "std": str(preprocess.STD),
            "calibration_a": repr(predictor.calibration.a), "calibration_b": repr(predictor.calibration.b),
            "threshold": repr(predictor.threshold), "classes": json.dumps(["NORMAL", "PNEUMONIA"]),
            "input": "float32 [N, 1, S, S] = ((equalised) grey levels / 255 - mean) / std"}


def export(predictor, path: str | Path) -> Path:
    """Write predictor's network (float32, dynamic batch) with its metadata to `path`."""
    import onnx

    path = Path(path)
    net = Network(predictor.model).float().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 1, predictor.image_size, predictor.image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(net, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT],
                                output_names=list(OUTPUTS), dynamic_shapes=({0: batch},), verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata(predictor))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path))
    return path


def quantize(path: str | Path, arrays: np.ndarray, intensity: str, out: str | Path) -> Path:
    """An int8 copy of the exported file at `out`, activation ranges calibrated on uint8 [N, S, S]
    training X-rays (never the held-out patients: they judge the result). Metadata is kept."""
    import logging

    import nncf
    import onnx

    nncf.set_log_level(logging.ERROR)
    x = preprocess.model_input_arrays(arrays, intensity)
    dataset = nncf.Dataset([x[i:i + 1] for i in range(len(x))], lambda item: {INPUT: item})
    model = nncf.quantize(onnx.load(str(path)), dataset, subset_size=len(x))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "precision": "int8"})
    out = Path(out)
    onnx.save_model(model, str(out))
    return out


def session(path: str | Path, threads: int = 0):
    """An ONNX Runtime session of the exported file (CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def validate(path: str | Path, predictor, arrays: np.ndarray) -> dict:
    """ONNX Runtime vs PyTorch (float32) on uint8 [N, S, S] images; raises OnnxMismatch.
    Returns the largest differences and the label agreement at the stored threshold."""
    x = preprocess.model_input_arrays(arrays, predictor.intensity)
    logits, feats, cams = session(path).run(None, {INPUT: x})
    ref_logits, ref_feats = predictor.forward(arrays)
    logits = logits.astype(np.float64)
    finite = np.isfinite(logits) & np.isfinite(ref_logits)
    # a broken network (NaN weights) is refused later, by serving checks; here only "same output" counts
    same_nonfinite = bool((np.isfinite(logits) == np.isfinite(ref_logits)).all())
    diff = float(np.abs(logits - ref_logits)[finite].max(initial=0.0)) if same_nonfinite else float("inf")
    labels = predictor.calibration.probability(logits) >= predictor.threshold
    ref_labels = predictor.calibration.probability(ref_logits) >= predictor.threshold
    report = {"n": int(len(arrays)), "max_abs_logit_diff": diff,
              "max_abs_feature_diff": float(np.abs(feats - ref_feats).max()),
              "label_agreement": float((labels == ref_labels).mean()), "tolerance": LOGIT_TOLERANCE,
              "max_abs_heatmap_diff": heatmap_difference(predictor, arrays[:HEATMAP_IMAGES], cams),
              "heatmap_tolerance": HEATMAP_TOLERANCE}
    if not diff <= LOGIT_TOLERANCE:
        raise OnnxMismatch(f"ONNX Runtime logits differ from PyTorch by {diff:.2g} (> {LOGIT_TOLERANCE}) "
                           f"on {len(arrays)} X-rays")
    if not report["max_abs_heatmap_diff"] <= HEATMAP_TOLERANCE:
        raise OnnxMismatch(f"heat maps from the ONNX file differ from PyTorch's Grad-CAM by "
                           f"{report['max_abs_heatmap_diff']:.2g} (> {HEATMAP_TOLERANCE})")
    return report


def heatmap_difference(predictor, arrays: np.ndarray, cams: np.ndarray) -> float:
    """Largest |ONNX heat map - PyTorch Grad-CAM| over `arrays` (0..1 scale); maps that are
    non-finite in both are skipped (a broken network is refused by the serving checks)."""
    from PIL import Image

    from pipeline.inference.decision import NonFiniteOutput
    from pipeline.inference.heatmap import from_activation_map

    worst = 0.0
    for arr, cam in zip(arrays, cams):
        try:
            reference = predictor.gradcam_features(Image.fromarray(arr))[1]
        except NonFiniteOutput:  # the network answers NaN: its map is no number either
            reference = np.full(arr.shape, np.nan, np.float32)
        ours = from_activation_map(cam, arr.shape)
        if not (np.isfinite(ours).all() and np.isfinite(reference).all()):
            worst = worst if np.isfinite(ours).all() == np.isfinite(reference).all() else float("inf")
            continue
        worst = max(worst, float(np.abs(ours - reference).max()))
    return worst
