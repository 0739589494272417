"""The shadow at work: a pending challenger answers live requests off the request path.

- `on_answered` (connected to analysis.answered) puts (result id, bytes) on a bounded queue and
  returns at once: it never blocks, and when the queue is full the request is dropped and counted.
  Confirmed-film imports (`site import`) are not live traffic and are not shadowed.
- One worker thread per process takes the queue. Before each job it waits (up to
  XRAY_SHADOW_MAX_WAIT s) until no doctor's answer is being computed in this process
  (pipeline.inference.concurrency.wait_idle). The challenger's network runs on its own inference thread at a low CPU
  priority (XRAY_SHADOW_NICE, inherited by the threads torch starts there; so is the thread that
  loads it, where the engines start theirs), so a doctor's answer comes first. The worker itself
  keeps the normal priority: the decoder processes it may start are shared with doctors' requests
  and inherit the priority of the thread that starts them.
- The challenger answers through the one inference path (pipeline.inference.answer.answer) with its
  own calibration, threshold and input gate; a refusal by its gate is stored as such. Anything else
  that goes wrong (no loadable challenger, an error) is counted as failed: the doctor's answer was
  stored before the job was queued and nothing here can touch it.
- Which version: the one the CHALLENGER alias names while it is pending (contract: no decision tag,
  or one starting with "pending", and not the champion). A `ChampionHolder` over that alias keeps it
  loaded and fresh; a decided or withdrawn challenger stops being shadowed at its next check.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import close_old_connections, transaction
from django.db.models import F

from pipeline.data import preprocess
from pipeline.inference import concurrency
from pipeline.inference.answer import answer
from pipeline.mlops.server import CHALLENGER

from .. import analysis
from ..batching import lower_priority
from ..champion import ChampionHolder, MlflowRegistry, RegistryUnavailable
from ..models import Diagnosis, ShadowAnswer, ShadowTally

log = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0     # dropped counts reach the database at least this often
LIVE_SOURCES = ("web", "api", "pacs")


def pending(client, name: str) -> int | None:
    """The pending challenger's version (pipeline.mlops.aliases.pending_challenger), or None."""
    from pipeline.mlops import aliases

    return aliases.pending_challenger(client, name)


class PendingRegistry(MlflowRegistry):
    """The registry as the shadow sees it: the challenger's version only while it is pending."""

    def __init__(self, *args, nice: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.nice = nice

    def current_version(self) -> str | None:
        from pipeline.mlops import server

        try:
            version = pending(server.client_of(self.tracking_uri), self.name)
        except Exception as exc:  # connection refused, timeouts, server errors
            raise RegistryUnavailable(str(exc).strip().splitlines()[0][:300] if str(exc).strip()
                                      else type(exc).__name__) from None
        return None if version is None else str(version)

    def load(self):
        lower_priority(self.nice)  # the holder's own loading thread: the engines' threads start here
        challenger = super().load()
        challenger.runner.nice = self.nice  # its inference thread starts on first use
        engine = getattr(challenger.predictor, "engine", None)
        if engine is not None:
            engine.stay_on_share()  # the doctors' answers may take every core, never the challenger's
        return challenger


@dataclass
class Job:
    diagnosis_id: object
    data: bytes
    heatmap: bool


class Shadow:
    """One per process: the challenger's holder, the queue and its worker thread."""

    def __init__(self, holder: ChampionHolder, size: int = 16, max_wait: float = 2.0, start: bool = True):
        self.holder = holder
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, int(size)))
        self.max_wait, self.start = float(max_wait), start
        self._dropped: Counter = Counter()  # (name, version) -> drops not yet written
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.processed = 0

    # --- the request side: never blocks ----------------------------------------------------------
    def submit(self, diagnosis: Diagnosis, data: bytes, heatmap: bool) -> bool:
        """Queue one answered request for the pending challenger; False when not queued."""
        challenger = self.holder.get(wait=False)  # a first load / re-check runs in the background
        version = challenger.version if challenger else self.holder.alias_version
        if challenger is None and version is None and self.holder.registry_reachable is not None:
            return False  # the registry was asked: no pending challenger
        try:
            self.queue.put_nowait(Job(diagnosis.pk, data, heatmap))
        except queue.Full:
            if version is not None:
                with self._lock:
                    self._dropped[(self.holder.registry.name, str(version))] += 1
            return False
        if self.start:
            self._ensure_thread()
        return True

    # --- the worker ----------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                job = self.queue.get(timeout=FLUSH_SECONDS)
            except queue.Empty:
                self._guarded(self.flush)
                continue
            concurrency.wait_idle(self.max_wait)  # doctors first
            self._guarded(lambda: self.process(job))
            self._guarded(self.flush)

    @staticmethod
    def _guarded(step) -> None:
        try:
            close_old_connections()
            step()
        except Exception:  # the worker outlives any fault (database away, a bug)
            log.exception("shadow worker step failed")

    def drain(self) -> int:
        """Process what is queued, in this thread (tests; a worker that is not started)."""
        n = 0
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                self.flush()
                return n
            self.process(job)
            n += 1

    def process(self, job: Job) -> ShadowAnswer | None:
        self.processed += 1
        challenger = self.holder.get(wait=True)  # blocks this thread only, bounded by the load timeout
        if challenger is None:  # a first load already under way (started by a request): wait for it
            self.holder.wait_idle(self.holder.load_timeout)
            challenger = self.holder.peek()
        name = self.holder.registry.name
        if challenger is None:
            if self.holder.alias_version is not None:  # pending, but it cannot be loaded or used
                count(name, self.holder.alias_version, failed=1)
            return None
        diagnosis = Diagnosis.objects.filter(pk=job.diagnosis_id).first()
        if diagnosis is None or diagnosis.shadow_answers.filter(
                model_name=challenger.name, model_version=challenger.version).exists():
            return None
        try:
            return store(diagnosis, challenger, job)
        except Exception:
            log.exception("shadow: v%s failed on result %s", challenger.version, diagnosis.pk)
            count(challenger.name, challenger.version, failed=1)
            return None

    def flush(self) -> None:
        with self._lock:
            drops, self._dropped = self._dropped, Counter()
        for (name, version), n in drops.items():
            count(name, version, dropped=n)

    def close(self) -> None:
        current = self.holder.peek()
        if current is not None:
            current.close()


def store(diagnosis: Diagnosis, challenger, job: Job) -> ShadowAnswer:
    """Run the challenger on the request's bytes (the one inference path) and record its answer."""
    started = time.perf_counter()
    row = ShadowAnswer(diagnosis=diagnosis, model_name=challenger.name, model_version=str(challenger.version))
    try:
        result = answer(job.data, challenger.predictor, limits=analysis.limits(), heatmap=job.heatmap,
                        network=challenger.runner)
    except preprocess.InvalidImage as exc:  # its gate (or its decoding at its size) refused the film
        row.refusal, row.threshold = exc.reason[:500], challenger.threshold
    else:
        p = result.prediction
        row.label, row.probability, row.logit = p.label, float(p.probability), p.logit
        row.threshold = float(p.threshold)
        if result.heatmap is not None:
            row.heatmap.save("heatmap.png", ContentFile(analysis.heatmap_png(result.heatmap)), save=False)
    row.ms = (time.perf_counter() - started) * 1000
    try:
        with transaction.atomic():
            row.save()
    except Exception:
        if row.heatmap:
            row.heatmap.storage.delete(row.heatmap.name)
        raise
    return row


def count(name: str, version, dropped: int = 0, failed: int = 0) -> None:
    """Add to a version's persisted tally (one row per version, updated in place)."""
    tally, _ = ShadowTally.objects.get_or_create(model_name=name, model_version=str(version))
    ShadowTally.objects.filter(pk=tally.pk).update(dropped=F("dropped") + dropped, failed=F("failed") + failed)


# --- the process-wide shadow -------------------------------------------------------------------------
_shadow: Shadow | None = None
_shadow_lock = threading.Lock()


def build() -> Shadow:
    registry = PendingRegistry(settings.MLFLOW_TRACKING_URI, settings.XRAY_MODEL_NAME, CHALLENGER,
                               settings.XRAY_INFERENCE_THREADS, settings.XRAY_MAX_BATCH, settings.XRAY_FAST_PATH,
                               nice=settings.XRAY_SHADOW_NICE)
    holder = ChampionHolder(registry, settings.XRAY_CHAMPION_CHECK_SECONDS, settings.XRAY_CHAMPION_RETRY_SECONDS,
                            settings.XRAY_CHAMPION_LOAD_TIMEOUT)
    return Shadow(holder, settings.XRAY_SHADOW_QUEUE, settings.XRAY_SHADOW_MAX_WAIT)


def current() -> Shadow | None:
    """The process's shadow (built on first use), or None when XRAY_SHADOW is off."""
    global _shadow
    if not settings.XRAY_SHADOW:
        return None
    if _shadow is None:
        with _shadow_lock:
            if _shadow is None:
                _shadow = build()
    return _shadow


def reset(new: Shadow | None = None) -> Shadow | None:
    """Replace the process's shadow (tests); returns the previous one."""
    global _shadow
    with _shadow_lock:
        previous, _shadow = _shadow, new
    return previous


def on_answered(sender, diagnosis: Diagnosis, data: bytes, heatmap: bool, **kwargs) -> None:
    """analysis.answered: a stored live answer goes to the pending challenger, if there is one."""
    if diagnosis.source not in LIVE_SOURCES:
        return
    shadow = current()
    if shadow is not None:
        shadow.submit(diagnosis, data, heatmap)
