"""One Predictor shared by threads (`mlflow models serve` answers requests in a thread pool): each
image's logit and pooled features (what the input gate judges) are its own, as when run alone."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from pipeline.model.network import build_model, logits_and_features
from pipeline.inference.predict import Predictor


def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(build_model("scratch").eval(), image_size=64, threshold=0.5, device="cpu", intensity="none")


def films(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (64, 64), dtype=np.uint8) for _ in range(n)]


def test_logits_and_features_is_the_network_itself():
    model = build_model("scratch").eval()
    x = torch.randn(3, 1, 64, 64)
    with torch.inference_mode():
        logit, features = logits_and_features(model, x)
        assert torch.equal(logit, model(x)[:, 0])
    assert features.shape == (3, 512)


def test_concurrent_predictions_keep_their_own_features():
    p, arrays = predictor(), films(24)
    alone = [p.forward(a[None]) for a in arrays]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda a: p.forward(a[None]), arrays * 4))
    for (logit, feats), (want_logit, want_feats) in zip(together, alone * 4):
        assert feats.shape == want_feats.shape == (1, 512)
        np.testing.assert_allclose(feats, want_feats, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logit, want_logit, rtol=1e-5, atol=1e-6)


def test_concurrent_heat_maps_keep_their_own_features():
    p, arrays = predictor(), films(8)
    alone = [p.forward(a[None])[1] for a in arrays]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda a: p.gradcam_features(Image.fromarray(a)), arrays * 2))
    for (prediction, cam, feats), want in zip(together, alone * 2):
        np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-5)
        assert cam.shape == (64, 64) and 0.0 <= prediction.probability <= 1.0
