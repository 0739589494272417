"""How many answers are being computed now, across the processes that serve them.

A gunicorn worker's engine runs on its share of the cores (XRAY_INFERENCE_THREADS: cores / workers),
so that workers answering at once do not fight over the machine. A lone answer (one doctor, a quiet
hour) leaves the other cores idle: then the engine runs it on every core (pipeline.inference.engine).
Measured on a 2-core Zen 4 (docs/benchmarks.md): one film's int8 forward pass 5.1 -> 3.1 ms, the
site's p50 at 1 client 21.3 -> 16.8-18.0 ms; every pass on all cores instead lost ~5 % at 8 clients.

The count is shared memory made before gunicorn forks its workers (gunicorn.conf.py imports this
module in the master); elsewhere (PACS worker, CLI, tests) it counts one process's answers. A
worker killed while counting leaves the count high: the engines then stay on their share, the safe
side, until the server restarts.
"""
from __future__ import annotations

import multiprocessing
from contextlib import contextmanager

_count = multiprocessing.Value("i", 0)


@contextmanager
def answering():
    """Counts the enclosed answer as being computed."""
    with _count.get_lock():
        _count.value += 1
    try:
        yield
    finally:
        with _count.get_lock():
            _count.value -= 1


def in_progress() -> int:
    return _count.value


def alone() -> bool:
    """At most one answer is being computed (the caller's own): the cores are free."""
    return _count.value <= 1
