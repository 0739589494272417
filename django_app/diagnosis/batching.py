"""One inference thread per loaded model, batching whatever requests are waiting.

Under gunicorn's threaded workers several requests reach the same model at once. Running them
one by one wastes the CPU (a batch of 4 costs far less than 4 single images), and running them
in parallel in the request threads oversubscribes the cores. So every model call goes through
this queue: a single thread takes everything that is waiting (no added wait: a lone request runs
at once) and answers each request's future.

A runner is the `network` that pipeline.inference.answer.answer() runs (`logit_features`,
`gradcam_features`, the Predictor's own methods): batching changes how many images one forward pass
carries, not what it computes.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import Future

import numpy as np

log = logging.getLogger(__name__)
_STOP = object()


def lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority (Linux: niceness is per thread and inherited by the threads
    and processes it starts). Best effort: where it cannot be set, it is logged and work goes on."""
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError) as exc:
        log.warning("could not lower the priority of thread %s: %s", threading.current_thread().name, exc)


class ModelRunner:
    def __init__(self, predictor, max_batch: int = 8, name: str = "model", threads: int = 0):
        self.predictor = predictor
        self.threads = int(threads or 0)
        self.max_batch = max(1, int(max_batch))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        # _state_lock makes "is it closed? then queue" one step with close()'s "closed; queue STOP":
        # a job is either queued before STOP (the thread answers it) or runs inline, never lost
        # behind a thread that already drained and exited.
        self._state_lock = threading.Lock()
        self._start_lock = threading.Lock()
        # one forward pass at a time on this model: the draining thread and late inline callers
        # would otherwise run it concurrently and oversubscribe the cores
        self._model_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._name = name
        self.nice = 0  # > 0: the thread's CPU priority is lowered (the shadow's challenger, diagnosis.shadow)
        self.batches = 0
        self.images = 0

    # --- what requests call ------------------------------------------------------------------
    def logit_features(self, array: np.ndarray, timeout: float | None = 120):
        """(raw logit, pooled features [1, D] for the input gate) of one uint8 [S, S] image."""
        return self._submit(("logit", array)).result(timeout)

    def gradcam_features(self, img, timeout: float | None = 120):
        """(Prediction, heat map, pooled features [1, D]) of one decoded image, alone in its pass."""
        return self._submit(("cam", img)).result(timeout)

    def close(self) -> None:
        """Stop after the queued work (the model was replaced); later calls run inline."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)

    # --- the inference thread -----------------------------------------------------------------
    def _submit(self, job) -> Future:
        future: Future = Future()
        with self._state_lock:
            if not self._closed:
                self._ensure_thread()
                self._queue.put((job, future))
                return future
        # a request that took this model just before the swap: still answered, here
        self._run([(job, future)])
        return future

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name=f"infer-{self._name}", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        lower_priority(self.nice)
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._drain()
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)  # handled after this batch
                    break
                batch.append(nxt)
            self._run(batch)

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._run([item])

    def _run(self, batch) -> None:
        with self._model_lock:
            self._run_locked(batch)

    def _run_locked(self, batch) -> None:
        singles = [(job, fut) for job, fut in batch if job[0] == "logit"]
        cams = [(job, fut) for job, fut in batch if job[0] == "cam"]
        if singles:
            try:
                logits, feats = self.predictor.forward(np.stack([job[1] for job, _ in singles]))
                for i, (_, fut) in enumerate(singles):
                    fut.set_result((float(logits[i]), feats[i:i + 1]))
                self.batches += 1
                self.images += len(singles)
            except BaseException as exc:  # every waiting request learns it, none hangs
                for _, fut in singles:
                    fut.set_exception(exc)
        for job, fut in cams:
            try:
                fut.set_result(self.predictor.gradcam_features(job[1]))
            except BaseException as exc:
                fut.set_exception(exc)
