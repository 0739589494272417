"""Plain helpers of the registry tests (importable by name: pytest puts this folder on sys.path)."""
from __future__ import annotations

import socket
import threading
import time

from pipeline.mlops import aliases


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_uri() -> str:
    """http URI of a port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}"


def contend(client, model_name: str, workers: int = 6, rounds: int = 1, hold_s: float = 0.02,
            join_s: float = 120, on_enter=None, **lock_kwargs) -> tuple[list, list, list]:
    """`workers` threads each take aliases.promotion_lock `rounds` times and hold it `hold_s`.
    Returns (done: who got in, overlaps: any moment two were inside, errors: what was raised)."""
    inside, overlaps, errors, done = [], [], [], []

    def worker(i):
        for _ in range(rounds):
            try:
                with aliases.promotion_lock(client, model_name, **lock_kwargs) as owner:
                    if on_enter:
                        on_enter(owner)
                    inside.append(i)
                    if len(inside) > 1:
                        overlaps.append(list(inside))
                    time.sleep(hold_s)
                    done.append(i)
                    inside.remove(i)
            except Exception as exc:  # noqa: BLE001 - the test asserts there is none
                errors.append(exc)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=join_s)
    return done, overlaps, errors
