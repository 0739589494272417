"""The serving tier (pipeline.inference.served): a version's ONNX file answering without torch,
its heat map from the graph's class activation map equal to PyTorch's Grad-CAM on real X-rays."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import preprocess
from pipeline.inference import onnx_export
from pipeline.inference.predict import Predictor
from pipeline.inference.served import NotServable, ServedModel
from pipeline.model import artifacts
from pipeline.model.network import build_model

SIZE = 224  # a 7x7 last stage: the map has structure to compare


@pytest.fixture(scope="module")
def films(shared_datasets) -> np.ndarray:
    """16 real X-rays, both classes, at 224 px."""
    files = sorted((shared_datasets / "fullres_samples").glob("*/*.jpeg"))[:4]
    for cls in ("NORMAL", "PNEUMONIA"):
        files += sorted((shared_datasets / "chest_xray" / "val" / cls).glob("*.jpeg"))[:6]
    return np.stack([preprocess.load_array(f, SIZE) for f in files])


def checkpoint_dict(model, intensity: str) -> dict:
    return {"state_dict": model.state_dict(), "arch": "resnet18", "image_size": SIZE, "threshold": 0.4,
            "intensity": intensity, "calibration": {"a": 1.3, "b": -0.2}, "gate": None}


@pytest.fixture(scope="module", params=["equalize", "none"])
def version_dir(request, tmp_path_factory):
    """A version directory as the registry holds it (artifacts/model.onnx + serving.json) of a
    seeded ResNet18 whose batch-norm statistics are not the identity (Grad-CAM's equality holds for
    any weights; trained ones are checked at every registration by onnx_export.validate)."""
    torch.manual_seed(7)
    model = build_model("scratch")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    ckpt = checkpoint_dict(model, request.param)
    predictor = Predictor(model, SIZE, 0.4, {k: v for k, v in ckpt.items() if k != "state_dict"}, "cpu",
                          intensity=request.param, calibration=None)
    predictor.calibration = type(predictor.calibration)(1.3, -0.2)
    root = tmp_path_factory.mktemp(f"version-{request.param}")
    onnx_export.export(predictor, root / "artifacts" / artifacts.ONNX_FILE)
    (root / "artifacts" / artifacts.SERVING_FILE).write_text(json.dumps(onnx_export.serving(
        {k: v for k, v in ckpt.items() if k != "state_dict"})))
    return root, predictor


def test_heat_map_equals_grad_cam_on_real_xrays(version_dir, films):
    root, predictor = version_dir
    served = ServedModel.from_dir(root, "f32")
    worst, corr = 0.0, []
    assert len(films) == 16
    for arr in films:
        ref_pred, ref_cam, ref_feats = predictor.gradcam_features(Image.fromarray(arr))
        pred, cam, feats = served.gradcam_features(Image.fromarray(arr))
        assert cam.shape == ref_cam.shape == (SIZE, SIZE) and cam.dtype == np.float32
        assert 0.0 <= cam.min() and cam.max() <= 1.0
        worst = max(worst, float(np.abs(cam - ref_cam).max()))
        if ref_cam.std() > 0:
            corr.append(float(np.corrcoef(cam.ravel(), ref_cam.ravel())[0, 1]))
        assert pred.label == ref_pred.label and pred.threshold == ref_pred.threshold == 0.4
        assert pred.probability == pytest.approx(ref_pred.probability, abs=1e-4)
        assert np.abs(feats - ref_feats).max() < 1e-3
    print(f"heat map vs Grad-CAM, {len(films)} X-rays, {served.intensity}: max |diff| {worst:.2e}, "
          f"min correlation {min(corr):.6f}")
    assert worst <= onnx_export.HEATMAP_TOLERANCE
    assert len(corr) >= len(films) // 2 and min(corr) > 0.9999


def test_served_answers_equal_the_reference(version_dir, films):
    root, predictor = version_dir
    served = ServedModel.from_dir(root, "f32")
    assert served.engine_name == "openvino-f32" and served.calibration.a == 1.3
    assert served.probabilities(films) == pytest.approx(predictor.probabilities(films), abs=1e-4)


def test_versions_without_the_serving_files_are_refused_with_the_reason(version_dir, tmp_path):
    root, predictor = version_dir
    no_serving = tmp_path / "old"
    shutil.copytree(root, no_serving)
    (no_serving / "artifacts" / artifacts.SERVING_FILE).unlink()
    with pytest.raises(NotServable, match="serving.json"):
        ServedModel.from_dir(no_serving)
    with pytest.raises(NotServable, match="model_int8.onnx"):
        ServedModel.from_dir(root, "int8")  # the fast path's file is missing
    # a graph exported before the class activation map existed: two outputs
    import onnx

    old = tmp_path / "two-outputs"
    shutil.copytree(root, old)
    model = onnx.load(str(old / "artifacts" / artifacts.ONNX_FILE))
    cam = next(o for o in model.graph.output if o.name == "cam")
    model.graph.output.remove(cam)
    onnx.save_model(model, str(old / "artifacts" / artifacts.ONNX_FILE))
    with pytest.raises(NotServable, match="class activation map"):
        ServedModel.from_dir(old)
