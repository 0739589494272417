"""Item 13 (first part): a NaN or inf model output is an error, never a NORMAL label."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.model.network import build_model
from pipeline.inference.decision import NonFiniteOutput
from pipeline.inference.predict import Predictor
from pipeline.inference.answer import answer_file


def xray_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_output_is_refused(value):
    model = build_model("scratch")
    with torch.no_grad():
        for p in model.parameters():  # a corrupted checkpoint: every weight non-finite
            p.fill_(value)
    predictor = Predictor(model, image_size=64, threshold=0.5, device="cpu", intensity="none")
    with pytest.raises(NonFiniteOutput):
        answer_file(xray_png(), predictor)
    with pytest.raises(NonFiniteOutput):
        predictor.label_for(value)


def test_finite_outputs_still_labelled():
    predictor = Predictor(build_model("scratch"), image_size=64, threshold=0.5, device="cpu", intensity="none")
    assert predictor.label_for(0.7).label == "PNEUMONIA" and predictor.label_for(0.2).label == "NORMAL"
