"""Plain helpers of the registry tests (importable by name: pytest puts this folder on sys.path)."""
from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_uri() -> str:
    """http URI of a port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}"
