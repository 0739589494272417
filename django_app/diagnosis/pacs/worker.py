"""The worker's loop (manage.py pacs_worker): feed -> claim -> analyse -> send, with back-off when
the PACS is down and a wait when no model is loaded. Several workers may run side by side: the
claims keep them apart (diagnosis.pacs.intake)."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections

from . import intake
from .client import PacsClient, PacsUnavailable

log = logging.getLogger(__name__)
MAX_BACKOFF = 60.0
# touched on every pass and every instance: the container's health check reads its age (docker-compose.yaml)
HEARTBEAT = Path(os.environ.get("XRAY_PACS_HEARTBEAT", "/tmp/pacs-worker.heartbeat"))


def beat() -> None:
    try:
        HEARTBEAT.touch()
    except OSError:  # a read-only or missing /tmp: no health signal, the work goes on
        pass
MAX_ATTEMPTS = 5


@dataclass
class Tally:
    states: dict = field(default_factory=dict)
    faults: int = 0

    def add(self, state: str) -> None:
        self.states[state] = self.states.get(state, 0) + 1


def drain(client: PacsClient, me: str, tally: Tally, stop=lambda: False) -> int:
    """Process claimable instances until there is none left (or until asked to stop: SIGTERM
    finishes the instance in hand, so `make stop` never leaves a half-sent result)."""
    n = 0
    while not stop():
        beat()
        inst = intake.claim(me)
        if inst is None:
            return n
        try:
            state = intake.process(client, inst)
        except (PacsUnavailable, intake.ModelUnavailable):
            intake.release(inst)  # the analysis, if done, is kept: only the sending is retried
            raise
        except Exception:
            if inst.attempts >= MAX_ATTEMPTS:  # a poison instance must not stop the queue forever
                log.exception("instance %s failed %d times: given up", inst.pacs_id, inst.attempts)
                intake.give_up(inst, "could not be analysed (internal error, logged for the administrators)")
                continue
            log.exception("instance %s failed; released for another try", inst.pacs_id)
            intake.release(inst)
            raise
        tally.add(state)
        log.info("instance %s: %s %s", inst.sop_uid or inst.pacs_id, state, inst.reason[:120])
        n += 1
    return n


def run(once: bool = False, client: PacsClient | None = None, stop=lambda: False) -> Tally:
    """The loop. `once`: take the feed, drain it, move the cursor, return (tests, cron)."""
    client = client or PacsClient.from_settings()
    me, name, tally, backoff = intake.worker_id(), settings.XRAY_PACS_URL, Tally(), 1.0
    intake.release_dead_claims()
    while not stop():
        beat()
        close_old_connections()
        try:
            last = intake.take_feed(client, name)
            done = drain(client, me, tally, stop)
            intake.advance_cursor(name, last)
            backoff = 1.0
        except PacsUnavailable as exc:
            tally.faults += 1
            if once:
                raise
            log.warning("PACS unavailable (%s): next try in %.0f s", exc, backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        except intake.ModelUnavailable:
            tally.faults += 1
            if once:
                return tally
            log.warning("no champion model loaded: studies wait in the queue")
            time.sleep(max(5.0, settings.XRAY_PACS_POLL_SECONDS))
            continue
        except Exception:  # an unexpected fault: logged, backed off, the worker lives on
            tally.faults += 1
            if once:
                raise
            log.exception("worker pass failed: next try in %.0f s", backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        if once:
            return tally
        if not done:
            time.sleep(settings.XRAY_PACS_POLL_SECONDS)
    return tally
