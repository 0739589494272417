"""Decoder processes with hard limits: what an untrusted file may cost, whatever a codec does.

The structural checks (imagefile, dicom, preprocess) refuse the hostile files we know of before
decoding. This is the net for the ones we do not: each upload is decoded in a separate process
that the kernel holds to
- an address-space limit (RLIMIT_AS: the decoder's own size when idle + XRAY_DECODE_MEMORY_MB),
  so an allocation past it fails inside the decoder (MemoryError), never in the web worker;
- a CPU-time limit (RLIMIT_CPU, re-armed before each file at the time used so far +
  XRAY_DECODE_CPU_SECONDS): past it the kernel kills the decoder (SIGXCPU);
and the caller waits at most XRAY_DECODE_WALL_SECONDS (a decoder stuck in I/O or sleep is killed).
A killed decoder is replaced; the upload is refused with the reason (preprocess.InvalidImage).

Decoders are fresh interpreters (`python -m pipeline.inference.isolation`: without torch or the web
worker's state, and without re-running the caller's main module as multiprocessing's spawn would;
~60 MB each), kept warm, and shared by the threads of a process: at most XRAY_DECODE_PROCESSES
at once, a thread waits for a free one. One file costs ~0.5 ms of inter-process traffic: its bytes go
over; what comes back is small (pipeline.inference.upload: the model input and the plan of the file
to keep, not the file).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from pipeline.data.preprocess import InvalidImage

MEMORY_MB = int(os.environ.get("XRAY_DECODE_MEMORY_MB", 1024))
CPU_SECONDS = int(os.environ.get("XRAY_DECODE_CPU_SECONDS", 4))
WALL_SECONDS = float(os.environ.get("XRAY_DECODE_WALL_SECONDS", 8))
PROCESSES = int(os.environ.get("XRAY_DECODE_PROCESSES", 2))
# one thread per decoder: no thread pools' address space, one core per file
SINGLE_THREADED = {var: "1" for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _serve(conn, memory_mb: int, cpu_seconds: int, preload: str) -> None:
    """The decoder process: import `preload` (the caller's decoders, before the address space is
    measured), set its limits, then run one call at a time until the pipe closes."""
    import importlib
    import resource

    if preload:
        importlib.import_module(preload)

    with open("/proc/self/statm") as f:
        idle = int(f.read().split()[0]) * resource.getpagesize()
    limit = idle + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):
            return
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (spent + cpu_seconds, resource.RLIM_INFINITY))
        try:
            reply = ("ok", fn(*args))
        except InvalidImage as exc:
            reply = ("refused", exc)
        except MemoryError:
            reply = ("error", f"the image needs more than {memory_mb} MB to decode: refused")
        except Exception as exc:  # noqa: BLE001 - whatever a codec raises is a refused file, not a 500
            reply = ("error", f"unreadable image: {type(exc).__name__}: {exc}"[:300])
        conn.send(reply)


class DecoderFailed(RuntimeError):
    """A decoder process could not be started or talked to: a server fault, not the file's."""


class Decoder:
    """One decoder process and its socket."""

    def __init__(self, memory_mb: int, cpu_seconds: int, preload: str = ""):
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.inference.isolation", str(theirs.fileno()), str(memory_mb), str(cpu_seconds),
             preload],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True,
            env={**os.environ, **SINGLE_THREADED, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        theirs.close()
        self.conn = Connection(ours.detach())

    def call(self, fn, args, wall_seconds: float):
        try:
            self.conn.send((fn, args))
        except OSError as exc:
            self.kill()
            raise DecoderFailed(f"decoder process unavailable: {exc}") from None
        if not self.conn.poll(wall_seconds):
            self.kill()
            raise InvalidImage(f"the file took more than {wall_seconds:g} s to decode: refused")
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):
            try:
                code = self.process.wait(1)
            except subprocess.TimeoutExpired:
                code = None
            self.kill()
            why = ("more CPU time than allowed" if code == -signal.SIGXCPU
                   else f"the decoder ended ({code})")
            raise InvalidImage(f"the file could not be decoded within its limits ({why}): refused") from None
        if status == "ok":
            return value
        raise value if status == "refused" else InvalidImage(value)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None and not self.conn.closed

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(5)
        self.conn.close()


class DecoderPool:
    """Up to `size` warm decoders shared by the threads of one process."""

    def __init__(self, size: int = PROCESSES, memory_mb: int = MEMORY_MB, cpu_seconds: int = CPU_SECONDS,
                 wall_seconds: float = WALL_SECONDS, preload: str = ""):
        self.size, self.memory_mb, self.cpu_seconds, self.wall_seconds = max(1, size), memory_mb, cpu_seconds, wall_seconds
        self.preload = preload   # the module whose functions the decoders run, imported at their start
        self._idle: list[Decoder] = []
        self._started = 0
        self._cond = threading.Condition()
        self._pid = os.getpid()

    def run(self, fn, *args):
        """fn(*args) in a decoder (fn and args must pickle: a module-level function)."""
        decoder = self._take()
        try:
            return decoder.call(fn, args, self.wall_seconds)
        finally:
            self._give(decoder)

    def _take(self) -> Decoder:
        deadline = time.monotonic() + self.wall_seconds * 4
        with self._cond:
            while True:
                while self._idle:
                    decoder = self._idle.pop()
                    if decoder.alive:
                        return decoder
                    self._started -= 1
                if self._started < self.size:
                    self._started += 1
                    break
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise InvalidImage("the server is busy decoding other uploads: try again in a moment")
        try:
            return Decoder(self.memory_mb, self.cpu_seconds, self.preload)
        except BaseException:
            with self._cond:
                self._started -= 1
                self._cond.notify()
            raise

    def _give(self, decoder: Decoder) -> None:
        with self._cond:
            if decoder.alive:
                self._idle.append(decoder)
            else:
                self._started -= 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._started -= len(idle)
        for decoder in idle:
            decoder.kill()


_pool: DecoderPool | None = None
_pool_lock = threading.Lock()


def pool(preload: str = "") -> DecoderPool:
    """This process's decoders (a forked child, e.g. a gunicorn worker, gets its own)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._pid != os.getpid():
            _pool = DecoderPool(preload=preload)
        return _pool


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "")
