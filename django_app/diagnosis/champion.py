"""The model that answers: the MLflow registry's champion, loaded once per process.

`holder()` returns the process-wide `ChampionHolder`. A request asks it for the current
`Champion` once and keeps that object until it has answered, so swapping in a new version never
disturbs a request in flight: the swap is one reference assignment, the old model is freed when
its last request finishes.

- The first request of a process loads the champion (blocking, bounded by XRAY_CHAMPION_LOAD_TIMEOUT).
- Afterwards the alias is re-checked at most every XRAY_CHAMPION_CHECK_SECONDS, in a background
  thread, so no request waits for the registry. A moved alias loads the new version, then swaps.
- Registry unreachable: the last loaded model keeps answering; the failure is reported by
  /healthz and retried every XRAY_CHAMPION_RETRY_SECONDS.
- No champion (alias absent or model not registered): nothing answers; pages say so, the API
  returns 503. A deleted alias withdraws the model from service at the next check.

mlflow and OpenVINO are imported only when a model is first needed, never at settings import; torch
never (the site answers from each version's ONNX file: pipeline.inference.served).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .batching import ModelRunner

log = logging.getLogger(__name__)

# A web request must not hang for minutes on MLflow's default retry policy (7 retries, backoff 2).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


class RegistryUnavailable(RuntimeError):
    """The registry could not be asked (network, server error)."""


@dataclass
class Champion:
    predictor: Any  # pipeline.inference.served.ServedModel
    name: str
    version: str
    run_id: str | None = None
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    load_seconds: float = 0.0
    max_batch: int = 8
    threads: int = 0
    # Every use of the network goes through one inference thread (see diagnosis.batching).
    runner: ModelRunner | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.runner is None:
            self.runner = ModelRunner(self.predictor, self.max_batch, name=f"v{self.version}",
                                      threads=self.threads)

    @property
    def threshold(self) -> float:
        return float(self.predictor.threshold)

    def close(self) -> None:
        self.runner.close()

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "threshold": self.threshold,
            "engine": self.predictor.engine_name,
            "image_size": int(getattr(self.predictor, "image_size", 0) or 0),
            "loaded_at": self.loaded_at.isoformat(timespec="seconds"),
        }


class MlflowRegistry:
    """Asks the MLflow registry which version holds the alias, and loads it via pipeline.mlops.aliases."""

    def __init__(self, tracking_uri: str, name: str, alias: str, threads: int = 0,
                 max_batch: int = 8, fast: bool = False):
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self.threads = threads
        self.max_batch = max_batch
        self.fast = fast

    def current_version(self) -> str | None:
        """Version number holding the alias; None when there is none; RegistryUnavailable otherwise."""
        from pipeline.mlops import server

        try:
            version = server.alias_version(server.client_of(self.tracking_uri), self.name, self.alias)
        except Exception as exc:  # connection refused, timeouts, DNS, server errors
            raise RegistryUnavailable(_short(exc)) from None
        return None if version is None else str(version)

    def load(self) -> Champion:
        import mlflow

        started = time.perf_counter()
        from pipeline.mlops import loading

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        predictor, mv = loading.serve_alias(self.alias, self.name, tracking_uri=self.tracking_uri,
                                            fast=self.fast, threads=self.threads)
        _warm_up(predictor)
        return Champion(
            predictor=predictor,
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id,
            load_seconds=time.perf_counter() - started,
            max_batch=self.max_batch,
            threads=self.threads,
        )


class WarmUpFailed(RuntimeError):
    """The new champion failed its warm-up: it is not put in service (the previous one stays)."""


def _warm_up(predictor) -> None:
    """One throw-away inference (so the first doctor does not pay for allocator/kernel set-up)
    that is also the model's admission test: a model that raises, or answers a non-finite or
    out-of-range probability or heat map here, would do the same for doctors, so it is refused
    (WarmUpFailed) and the holder keeps serving the model it has."""
    import math

    import numpy as np
    from PIL import Image

    def check(values) -> None:
        if not values or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
            raise WarmUpFailed(f"warm-up answered invalid probabilities {values}")

    size = int(predictor.image_size)
    try:
        probs = predictor.probabilities(np.zeros((1, size, size), dtype=np.uint8))
    except Exception as exc:
        raise WarmUpFailed(f"warm-up inference failed: {type(exc).__name__}: {exc}") from exc
    check([float(p) for p in np.asarray(probs).ravel()])
    try:
        prediction, cam = predictor.gradcam(Image.new("L", (size, size), 128))  # autograd's first pass is slow too
    except Exception as exc:
        raise WarmUpFailed(f"warm-up heat map failed: {type(exc).__name__}: {exc}") from exc
    check([float(prediction.probability)])
    if not np.isfinite(np.asarray(cam, dtype=np.float64)).all():
        raise WarmUpFailed("warm-up heat map is not finite")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


class ChampionHolder:
    def __init__(self, registry, check_seconds: float = 30.0, retry_seconds: float = 10.0,
                 load_timeout: float = 120.0):
        self.registry = registry
        self.check_seconds = max(0.0, float(check_seconds))
        self.retry_seconds = max(0.0, float(retry_seconds))
        self.load_timeout = float(load_timeout)
        self._current: Champion | None = None
        self._lock = threading.Lock()  # one refresh at a time
        self._next_check = 0.0  # time.monotonic() deadline
        self._background: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._cond = threading.Condition()
        self._busy = False
        self._cycles = 0
        self.last_checked: datetime | None = None
        self.last_error: str | None = None
        self.registry_reachable: bool | None = None
        self.alias_version: str | None = None  # what the registry said last
        self._refused: str | None = None  # the version that failed its warm-up

    # --- what requests call ------------------------------------------------------------------
    def get(self, wait: bool = True) -> Champion | None:
        """The model to answer this request with, or None when there is no champion.
        wait=False never blocks (health checks): a first load then happens in the background."""
        current = self._current
        if current is None:
            if time.monotonic() >= self._next_check:
                if wait:
                    self._refresh_and_wait(self.load_timeout)
                else:
                    self._refresh_in_background()
            return self._current
        if time.monotonic() >= self._next_check:
            self._refresh_in_background()
        return current

    def peek(self) -> Champion | None:
        """The loaded model, without asking the registry (templates, footers)."""
        return self._current

    def status(self) -> dict:
        current = self._current
        return {
            "champion_loaded": current is not None,
            "champion": current.describe() if current else None,
            "registry": {
                "model_name": getattr(self.registry, "name", None),
                "alias": getattr(self.registry, "alias", None),
                "reachable": self.registry_reachable,
                "alias_version": self.alias_version,
                "last_checked": self.last_checked.isoformat(timespec="seconds") if self.last_checked else None,
                "last_error": self.last_error,
                "check_seconds": self.check_seconds,
            },
        }

    # --- refreshing --------------------------------------------------------------------------
    def refresh(self, timeout: float | None = None) -> Champion | None:
        """Ask the registry now and load a new version if the alias moved (blocking, this thread)."""
        acquired = self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))
        if not acquired:
            return self._current
        try:
            self._refresh_locked()
        finally:
            self._lock.release()
        return self._current

    # Background refreshes run on ONE long-lived thread per process. Loading a model runs torch
    # (OpenMP) on the loading thread; when such a thread exits, libgomp leaves the next OpenMP
    # team of the process pathologically slow (measured: 900 ms instead of 45 ms per image with
    # 2 threads). A thread that never exits avoids it.
    def _ensure_refresher(self) -> None:
        thread = self._background
        if thread is not None and thread.is_alive():
            return
        with self._start_lock:
            if self._background is None or not self._background.is_alive():
                self._background = threading.Thread(target=self._refresher, name="champion-refresh", daemon=True)
                self._background.start()

    def _refresher(self) -> None:
        while True:
            self._wake.wait()
            with self._cond:
                self._wake.clear()
                self._busy = True
            try:
                self.refresh()
            except Exception:  # never let the refresher die silently
                log.exception("champion refresh failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cycles += 1
                    self._cond.notify_all()

    def _refresh_in_background(self) -> None:
        # claim the slot first, so concurrent requests wake the refresher once, not many times
        self._next_check = time.monotonic() + max(self.retry_seconds, 1.0)
        self._ensure_refresher()
        self._wake.set()

    def _refresh_and_wait(self, timeout: float) -> None:
        with self._cond:
            start = self._cycles
        self._ensure_refresher()
        self._wake.set()
        with self._cond:
            self._cond.wait_for(lambda: self._cycles > start and not self._busy, timeout)

    def _refresh_locked(self) -> None:
        self.last_checked = datetime.now(timezone.utc)
        try:
            version = self.registry.current_version()
        except RegistryUnavailable as exc:
            self.registry_reachable = False
            self.last_error = f"model registry unreachable: {exc}"
            self._next_check = time.monotonic() + self.retry_seconds
            if self._current is not None:
                log.warning("%s; still serving %s v%s", self.last_error, self._current.name, self._current.version)
            else:
                log.warning("%s; no model loaded", self.last_error)
            return
        self.registry_reachable = True
        self.alias_version = version
        if version is None:
            if self._current is not None:
                log.warning("alias '%s' of %s no longer exists: model %s v%s withdrawn from service",
                            getattr(self.registry, "alias", "?"), getattr(self.registry, "name", "?"),
                            self._current.name, self._current.version)
            if self._current is not None:
                self._current.close()
            self._current = None
            self.last_error = None
            self._next_check = time.monotonic() + self.check_seconds
            return
        current = self._current
        if version == self._refused:   # failed its warm-up: not reloaded until the alias moves
            self._next_check = time.monotonic() + self.check_seconds
            return
        if current is None or current.version != version:
            try:
                champion = self.registry.load()
            except Exception as exc:
                self.last_error = f"could not load version {version}: {_short(exc)}"
                log.exception("loading champion version %s failed", version)
                if isinstance(exc, WarmUpFailed):   # deterministic: retrying cannot help
                    self._refused = version
                self._next_check = time.monotonic() + self.retry_seconds
                return
            self._current = champion  # the swap: requests in flight keep their own reference
            if current is not None:
                current.close()  # its queued work is finished first; late callers run inline
            log.info("champion %s v%s loaded in %.1f s (was %s)", champion.name, champion.version,
                     champion.load_seconds, current.version if current else "none")
        self.last_error = None
        self._next_check = time.monotonic() + self.check_seconds

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no background refresh is pending or running (tests, shutdown)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._busy and not self._wake.is_set(), timeout)


_holder: ChampionHolder | None = None
_holder_lock = threading.Lock()


def model_card(version: str) -> str:
    """The model card (Markdown description) of a registered version of the served model.
    Raises RegistryUnavailable when MLflow cannot be asked, LookupError for an unknown version."""
    from pipeline.mlops import server

    registry = holder().registry  # the registered model that serves this site
    name = registry.name
    client = server.connect(registry.tracking_uri)
    try:
        return client.get_model_version(name, str(version)).description or ""
    except Exception as exc:  # noqa: BLE001 - mlflow raises its own or requests' errors
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
            raise LookupError(f"{name} version {version} is not registered") from exc
        raise RegistryUnavailable(str(exc)) from exc


def holder() -> ChampionHolder:
    """The process-wide holder, built from settings on first use."""
    global _holder
    if _holder is None:
        with _holder_lock:
            if _holder is None:
                _holder = build_holder()
    return _holder


def build_holder() -> ChampionHolder:
    from django.conf import settings

    registry = MlflowRegistry(settings.MLFLOW_TRACKING_URI, settings.XRAY_MODEL_NAME, settings.XRAY_CHAMPION_ALIAS,
                              settings.XRAY_INFERENCE_THREADS, settings.XRAY_MAX_BATCH, settings.XRAY_FAST_PATH)
    return ChampionHolder(registry, settings.XRAY_CHAMPION_CHECK_SECONDS,
                          settings.XRAY_CHAMPION_RETRY_SECONDS, settings.XRAY_CHAMPION_LOAD_TIMEOUT)


def reset_holder(new: ChampionHolder | None = None) -> ChampionHolder | None:
    """Replace the process-wide holder (tests; settings changed); returns the previous one."""
    global _holder
    with _holder_lock:
        previous, _holder = _holder, new
    return previous
