"""How many answers are being computed now: in this process, and across the processes that serve them.

A gunicorn worker's engine runs on its share of the cores (XRAY_INFERENCE_THREADS: cores / workers),
so that workers answering at once do not fight over the machine. A lone answer (one doctor, a quiet
hour) leaves the other cores idle: then the engine runs it on every core (pipeline.inference.engine).
Measured on a 2-core Zen 4 (docs/benchmarks.md): one film's int8 forward pass 5.1 -> 3.1 ms, the
site's p50 at 1 client 21.3 -> 16.8-18.0 ms; every pass on all cores instead lost ~5 % at 8 clients.

Two counts of the same answers, kept by `answering()`:
- the site's, in shared memory made before gunicorn forks its workers (gunicorn.conf.py imports this
  module in the master); elsewhere (PACS worker, CLI, tests) it counts one process's answers. A
  worker killed while counting leaves it high: the engines then stay on their share, the safe side,
  until the server restarts;
- this process's, with a condition that background work waits on (`wait_idle`: the shadow's
  challenger answers after the doctors of its own worker).
"""
from __future__ import annotations

import multiprocessing
import threading
from contextlib import contextmanager

_site = multiprocessing.Value("i", 0)
_here = 0
_idle = threading.Condition()


@contextmanager
def answering():
    """Counts the enclosed answer as being computed."""
    global _here
    with _idle:
        _here += 1
    with _site.get_lock():
        _site.value += 1
    try:
        yield
    finally:
        with _site.get_lock():
            _site.value -= 1
        with _idle:
            _here -= 1
            if not _here:
                _idle.notify_all()


def alone() -> bool:
    """At most one answer is being computed on the site (the caller's own): the cores are free."""
    return _site.value <= 1


def wait_idle(timeout: float) -> bool:
    """Wait up to `timeout` s until this process computes no answer; False if it still does."""
    with _idle:
        return _idle.wait_for(lambda: not _here, timeout)
