"""diagnosis.batching: concurrent requests share forward passes and get exactly their own answer."""
from __future__ import annotations

import threading

import numpy as np
import pytest


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    from pipeline.predict import Predictor

    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu")


def _images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(n)]


def test_concurrent_requests_are_batched_and_answered_exactly(predictor):
    from diagnosis.batching import ModelRunner

    images = _images(16, predictor.image_size)
    expected = predictor.probabilities(np.stack(images))
    runner = ModelRunner(predictor, max_batch=8)
    results, start = [None] * len(images), threading.Barrier(len(images))

    def ask(i):
        start.wait()
        results[i] = runner.probability(images[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert runner.images == 16
    assert runner.batches < 16  # some requests shared a forward pass
    np.testing.assert_allclose(results, expected, atol=1e-5)  # and each got its own probability
    runner.close()


def test_gradcam_and_errors_go_through_the_runner(predictor):
    from PIL import Image

    from diagnosis.batching import ModelRunner

    runner = ModelRunner(predictor)
    img = Image.fromarray(_images(1, 200)[0])
    prediction, cam = runner.gradcam(img)
    direct, direct_cam = predictor.gradcam(img)
    assert prediction.probability == pytest.approx(direct.probability, abs=1e-5)
    np.testing.assert_allclose(cam, direct_cam, atol=1e-4)
    with pytest.raises(Exception):  # a wrong shape fails that request, and the thread lives on
        runner.probability(np.zeros((3, 3, 3), np.uint8))
    assert 0 <= runner.probability(_images(1, predictor.image_size)[0]) <= 1


def test_a_closed_runner_still_answers_late_requests(predictor):
    """A request that picked up the old model just before a swap is answered, not hung."""
    from diagnosis.batching import ModelRunner

    runner = ModelRunner(predictor)
    image = _images(1, predictor.image_size)[0]
    before = runner.probability(image)
    runner.close()
    assert runner.probability(image, timeout=30) == pytest.approx(before, abs=1e-6)
