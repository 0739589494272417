"""diagnosis.batching: concurrent requests share forward passes and get exactly their own answer."""
from __future__ import annotations

import threading

import numpy as np
import pytest


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    from pipeline.inference.predict import Predictor

    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu")


def _images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(n)]


def test_concurrent_requests_are_batched_and_answered_exactly(predictor):
    from diagnosis.batching import ModelRunner

    images = _images(16, predictor.image_size)
    expected = predictor.logits(np.stack(images))
    runner = ModelRunner(predictor, max_batch=8)
    results, start = [None] * len(images), threading.Barrier(len(images))

    def ask(i):
        start.wait()
        results[i] = runner.logit_features(images[i])[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert runner.images == 16
    assert runner.batches < 16  # some requests shared a forward pass
    np.testing.assert_allclose(results, expected, atol=1e-5)  # and each got its own logit
    runner.close()


def test_gradcam_and_errors_go_through_the_runner(predictor):
    from PIL import Image

    from diagnosis.batching import ModelRunner

    runner = ModelRunner(predictor)
    img = Image.fromarray(_images(1, 200)[0])
    prediction, cam, _ = runner.gradcam_features(img)
    direct, direct_cam = predictor.gradcam(img)
    assert prediction.probability == pytest.approx(direct.probability, abs=1e-5)
    np.testing.assert_allclose(cam, direct_cam, atol=1e-4)
    with pytest.raises(Exception):  # a wrong shape fails that request, and the thread lives on
        runner.logit_features(np.zeros((3, 3, 3), np.uint8))
    assert np.isfinite(runner.logit_features(_images(1, predictor.image_size)[0])[0])


def test_a_closed_runner_still_answers_late_requests(predictor):
    """A request that picked up the old model just before a swap is answered, not hung."""
    from diagnosis.batching import ModelRunner

    runner = ModelRunner(predictor)
    image = _images(1, predictor.image_size)[0]
    before = runner.logit_features(image)[0]
    runner.close()
    assert runner.logit_features(image, timeout=30)[0] == pytest.approx(before, abs=1e-6)


def test_a_request_racing_close_is_not_lost(predictor):
    """Issue 11 item 11: a request that saw the runner open, then lost the CPU while close() and
    the drain ran, used to be queued behind an exited thread and time out."""
    import time

    from diagnosis.batching import ModelRunner

    class SlowSubmit(ModelRunner):  # the delay the issue injected, between "open?" and "queue it"
        def _ensure_thread(self):
            super()._ensure_thread()
            if threading.current_thread().name == "late-request":
                time.sleep(0.5)

    runner = SlowSubmit(predictor)
    image = _images(1, predictor.image_size)[0]
    expected = runner.logit_features(image)[0]            # the inference thread is running
    answer = []
    late = threading.Thread(target=lambda: answer.append(runner.logit_features(image, timeout=10)[0]),
                            name="late-request")
    late.start()
    time.sleep(0.1)
    runner.close()                                  # the model is swapped out meanwhile
    late.join(20)
    assert answer and answer[0] == pytest.approx(expected, abs=1e-6)


def test_drain_and_late_inline_callers_never_run_the_model_at_once(predictor):
    """Issue 11 item 11: after close(), the draining thread and inline callers take turns."""
    import time

    from diagnosis.batching import ModelRunner

    class Counting:
        def __init__(self, inner):
            self.inner, self.active, self.most, self.lock = inner, 0, 0, threading.Lock()

        def forward(self, arrays):
            with self.lock:
                self.active += 1
                self.most = max(self.most, self.active)
            time.sleep(0.02)
            try:
                return self.inner.forward(arrays)
            finally:
                with self.lock:
                    self.active -= 1

    counting = Counting(predictor)
    runner = ModelRunner(counting, max_batch=1)
    images = _images(12, predictor.image_size)
    queued = [runner._submit(("logit", img)) for img in images]   # a backlog for the drain
    runner.close()
    late = [threading.Thread(target=runner.logit_features, args=(img,)) for img in images[:4]]
    for t in late:
        t.start()
    for t in late:
        t.join(30)
    assert all(np.isfinite(f.result(30)[0]) for f in queued)   # (logit, gate features)
    assert counting.most == 1
