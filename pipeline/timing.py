"""Wall time per step of a DAG task (data loading, epochs, calibration, gate fit, stress sets, ONNX
export, int8, the fast-path check, scoring each candidate...): where a retraining cycle's minutes go.

    with timing.step("gate fit"):
        ...
    timing.take()   # {"gate fit": 12.3, "register / onnx export": 4.1, ...}: this process's steps, cleared

A step inside another is named "outer / inner" (its time also counts in the outer one). Each step is
logged when it ends; the DAG's tasks hand theirs on with hand_on() as the XCom `steps`
(benchmarks/bench_dag.py).
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)
_local = threading.local()
_done: dict[str, float] = {}
_lock = threading.Lock()


@contextmanager
def step(name: str):
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    full = " / ".join(stack)
    with _lock:
        _done.setdefault(full, 0.0)   # listed where it starts: an outer step before its inner ones
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - started
        stack.pop()
        with _lock:
            _done[full] = _done.get(full, 0.0) + seconds
        log.info("step %s: %.1f s", full, seconds)


def take(clear: bool = True) -> dict[str, float]:
    """The steps timed since the last take() (repeats of a name summed), in the order they started."""
    with _lock:
        out = {k: round(v, 2) for k, v in _done.items()}
        if clear:
            _done.clear()
    return out


def hand_on(ti) -> dict[str, float]:
    """Take a DAG task's steps and push them as its XCom `steps` (`ti`: the Airflow task instance)."""
    steps = take()
    if steps:
        ti.xcom_push(key="steps", value=steps)
        log.info("steps (s): %s", ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))
    return steps
