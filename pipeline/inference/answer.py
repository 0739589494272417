"""The one inference path: an upload's bytes -> the answer a doctor reads.

Everything that answers for an image calls `answer`: the web site and the API (django_app's
diagnosis.analysis), the registered pyfunc (pipeline.mlops.pyfunc), the CLI (`python -m pipeline
predict`) and the PACS worker. The steps, in order:

1. checks before decoding, then decoding, in a decoder process with hard limits
   (pipeline.inference.upload.decode_untrusted; the file gate runs there, DICOM headers through the
   one bounded parser);
2. one forward pass (with the heat map when asked): the raw logit and the pooled features;
3. calibration and the threshold stored with the version (decision.Decisions.decide);
4. the learned input gate on the same pass (Decisions.judged): a readable file that is not a frontal
   chest X-ray raises gate.NotAChestXray.

The model is a Decisions: the float32 torch Predictor (pyfunc, CLI) or the version's ONNX file
(served.ServedModel: the site, API and PACS worker, no torch). Who runs its network is the caller's
choice (`network`): the model itself by default, or the web's batching thread
(diagnosis.batching.ModelRunner), which has the same two methods. Batching changes how many images
a pass carries, never what it computes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from pipeline.data import preprocess
from pipeline.inference.upload import Decoded, Limits, decode_untrusted

if TYPE_CHECKING:
    from pipeline.inference.decision import Decisions as Predictor, Prediction


class Network(Protocol):
    def logit_features(self, array: np.ndarray) -> tuple[float, np.ndarray]: ...
    def gradcam_features(self, img: Image.Image) -> tuple[Prediction, np.ndarray, np.ndarray]: ...


@dataclass
class Answer:
    prediction: Prediction           # label, calibrated probability, threshold, raw logit, gate score, warning
    heatmap: np.ndarray | None       # Grad-CAM [S, S] in [0, 1] when asked for
    file: Decoded                    # format, size, and (keep=True) the metadata-free file to store
    decode_ms: float
    infer_ms: float


def answer(data: bytes, predictor: Predictor, *, limits: Limits = Limits(), heatmap: bool = False,
           keep: bool = False, network: Network | None = None) -> Answer:
    """Raises preprocess.InvalidImage for what cannot be read, and its subclass gate.NotAChestXray
    for a readable file that is not a frontal chest X-ray; either way nothing was answered."""
    t0 = time.perf_counter()
    decoded = decode_untrusted(data, predictor.image_size, limits, keep=keep)
    t1 = time.perf_counter()
    net = network or predictor
    cam = None
    if heatmap:
        prediction, cam, feats = net.gradcam_features(decoded.image)
    else:
        logit, feats = net.logit_features(decoded.array)
        prediction = predictor.decide(logit)
    prediction = predictor.judged(prediction, decoded.array, feats, decoded.warnings)
    return Answer(prediction, cam, decoded, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000)


def answer_file(source, predictor: Predictor, **kwargs) -> Answer:
    """answer() for a path or bytes (the CLI): the size limit is checked before reading the file."""
    limits = kwargs.get("limits", Limits())
    return answer(preprocess.read_bytes(source, limits.max_bytes), predictor, **kwargs)
