"""Alias moves: promote, reject, rollback, each under the promotion lock.

Concurrency. Two promotions may race (a manual `promote` while the DAG promotes). Every alias
change (promote, rollback) runs under a registry-wide mutex: a registered model named
`locks.promotion.<name>` (lock_name), created with create_registered_model. Its name is the primary
key of the registry table, so creation is atomic in the backend database (SQLite or PostgreSQL):
exactly one process creates it, the others get RESOURCE_ALREADY_EXISTS and wait. The lock lives
outside the served model's name (no `<name>` prefix), so searches or grants by that name never meet
it. A lock older than LOCK_STALE_S on the server's clock (crashed holder) is broken; LOCK_STALE_S
must be shorter than LOCK_WAIT_S. Under the lock, a decision is applied only if the champion
it was computed against is still the champion (compare-and-set); otherwise it is "stale" and is
tagged and reported, not applied. Aliases are written previous_champion first, champion second, and
read back afterwards; readers never see `champion` on a half-registered version.

Every move (and each rejection) is written to the audit trail (pipeline.mlops.audit) under the
lock, right after the aliases moved; a retried promote writes the entry its first try left out.
"""
from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from contextlib import contextmanager

from pipeline.mlops import audit
from pipeline.mlops.server import (CHALLENGER, CHAMPION, PREVIOUS, PromotionError, alias_version, check_server, connect,
                                   fmt, model_name, now, tag_version)
from pipeline.mlops.versions import METRIC_KEYS, log_version_scores

log = logging.getLogger(__name__)

LOCK_PREFIX = "locks.promotion."


LOCK_STALE_S = float(os.environ.get("XRAY_PROMOTION_LOCK_STALE_S", 60))


LOCK_WAIT_S = float(os.environ.get("XRAY_PROMOTION_LOCK_WAIT_S", 120))


def lock_name(name: str) -> str:
    """The promotion lock of registered model `name`: a name that does not start with `name`."""
    return f"{LOCK_PREFIX}{name}"


def _lock_age_ms(client, lock: str, owner: str):
    """(creation timestamp, age in ms) of the held lock, both on the MLflow server's clock: touching
    the lock's description makes the server stamp last_updated_timestamp with its own now. The
    client's clock never enters (a skewed host neither breaks a live lock nor keeps a dead one)."""
    held = client.update_registered_model(lock, description=f"promotion lock; last seen by {owner}")
    stamp = int(held.creation_timestamp or 0)
    return held, stamp, int(held.last_updated_timestamp or 0) - stamp


@contextmanager
def promotion_lock(client, name: str, wait_s: float | None = None, stale_s: float | None = None):
    """Registry-wide mutex: an atomically created registered model `lock_name(name)`.

    A lease: a lock whose age on the server's clock (_lock_age_ms) reaches stale_s is broken, so a
    crashed holder's lock is broken by the first waiter that sees it that old. stale_s < wait_s is
    required: otherwise waiters give up before a dead lock can be broken.
    Breaking is serialised by a second atomic create, `<lock>.break-<creation ms>`: without it two
    waiters could both see the stale lock, one break it and take a new one, and the other then
    delete that new lock and enter too.
    """
    from mlflow.exceptions import MlflowException

    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    stale_s = LOCK_STALE_S if stale_s is None else stale_s
    if stale_s >= wait_s:
        raise ValueError(f"promotion lock: stale_s ({stale_s:.0f}s, XRAY_PROMOTION_LOCK_STALE_S) must be "
                         f"shorter than wait_s ({wait_s:.0f}s, XRAY_PROMOTION_LOCK_WAIT_S)")
    lock = lock_name(name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(lock, tags={"owner": owner},
                                           description="transient: held while an alias of "
                                                       f"'{name}' changes (pipeline.mlops.aliases)")
            break
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                # the server's create hit the unique key, then found the holder's lock already
                # deleted while composing "already exists": free again, try at once
                if time.monotonic() > deadline:
                    raise PromotionError(f"promotion lock {lock}: still contended after {wait_s:.0f}s") from exc
                continue
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        try:
            held, stamp, age_ms = _lock_age_ms(client, lock, owner)
        except MlflowException:
            continue  # released between our create and our read: try again at once
        if age_ms >= stale_s * 1000:
            _break_stale_lock(client, lock, stamp, held.tags.get("owner"), age_ms / 1000)
            continue
        if time.monotonic() > deadline:
            raise PromotionError(f"promotion lock {lock} held by {held.tags.get('owner')} for {age_ms / 1000:.0f}s "
                                 f"(server clock); gave up after {wait_s:.0f}s")
        time.sleep(0.1 + random.random() * 0.3)
    try:
        yield owner
    finally:
        try:
            if client.get_registered_model(lock).tags.get("owner", owner) == owner:
                client.delete_registered_model(lock)
            else:
                log.warning("promotion lock %s was broken as stale while held by %s", lock, owner)
        except MlflowException as exc:  # already broken as stale and released by someone else
            log.warning("could not release %s: %s", lock, exc)


def _break_stale_lock(client, lock: str, stamp: int, holder: str | None, age: float) -> None:
    """Delete the lock created at `stamp` if it is still that one; one breaker per stale lock."""
    from mlflow.exceptions import MlflowException

    marker = f"{lock}.break-{stamp}"
    try:
        client.create_registered_model(marker, description="transient: breaking a stale promotion lock")
    except MlflowException:
        return   # another waiter is breaking this lock (or has): go back to waiting for it
    try:
        if client.get_registered_model(lock).creation_timestamp == stamp:
            log.warning("breaking stale promotion lock %s held by %s (%.0fs old, server clock)", lock, holder, age)
            client.delete_registered_model(lock)
    except MlflowException:
        pass   # already released by its holder
    finally:
        # Late breakers of this stamp get the marker only after the lock they saw is gone: their
        # re-check finds a newer creation time (or nothing) and they delete nothing.
        try:
            client.delete_registered_model(marker)
        except MlflowException:
            pass


def _decision_tags(decision: dict, verdict: str) -> dict[str, str]:
    tags = {"decision": verdict, "decision_reason": str(decision.get("reason", ""))[:5000],
            "decided_at": str(decision.get("decided_at") or now()),
            "compared_with": str(decision.get("champion_version") or "none")}
    if decision.get("n_test") is not None:
        tags["eval_n"] = str(decision["n_test"])
    for key, c in (decision.get("comparison") or {}).items():
        if c:
            tags[f"compare.{key}.auc_delta"] = fmt(c["delta"])
            tags[f"compare.{key}.interval"] = f"[{fmt(c['low'])}, {fmt(c['high'])}]"
    approval = decision.get("approval")   # a reviewer's sign-off (pipeline.mlops.review.approval_record)
    if approval:
        tags.update({f"approval.{key}": str(approval.get(key) or "")[:5000] for key in ("by", "at", "comment")})
    return tags


PENDING = "pending_"   # decision tags of a challenger still waiting: pending_shadow, pending_approval


def pending_challenger(client, name: str) -> int | None:
    """The pending challenger's version: the CHALLENGER alias, its decision tag absent (just
    registered) or pending_*, and not the champion's version; None when there is none. The site's
    shadow mode answers with this version."""
    version = alias_version(client, name, CHALLENGER)
    if version is None or version == alias_version(client, name, CHAMPION):
        return None
    tag = str(client.get_model_version(name, str(version)).tags.get("decision", ""))
    return version if not tag or tag.startswith(PENDING) else None


def mark_pending(version: int, state: str, reason: str, *, name: str | None = None) -> None:
    """Tag a challenger the policy would promote as waiting (`pending_shadow`, `pending_approval`):
    the site shadows the pending challenger; promote / reject replace the tag with the verdict."""
    if not state.startswith(PENDING):
        raise ValueError(f"not a pending state: {state!r}")
    client = connect(check_server())
    tag_version(client, model_name(name=name), int(version),
                {"decision": state, "decision_reason": reason[:5000], "decided_at": now()})


def _log_decision_scores(client, name: str, version: int, decision: dict) -> None:
    """The figures the decision compared: challenger.<key> and champion.<key> on the challenger."""
    log_version_scores(client, name, version, {f"{role}.{key}": value for role in ("challenger", "champion")
                                               for key, value in (decision.get(f"{role}_metrics") or {}).items()
                                               if key in METRIC_KEYS})


DECISION_HEADING = "**Promotion decision.**"


def _card_decision(client, name: str, version: int, verdict: str, reason: str) -> None:
    """Write the decision into the version's model card (its description), replacing an older one."""
    card = client.get_model_version(name, str(version)).description or ""
    card = card.split(DECISION_HEADING)[0].rstrip()
    client.update_model_version(name, str(version), description=f"{card}\n\n{DECISION_HEADING} {verdict}: {reason}")


def promote(version: int, decision: dict | None = None, *, name: str | None = None, force: bool = False) -> dict:
    """Make `version` the champion; the old champion becomes previous_champion.

    `decision` (from decide()) is applied only if the champion it compared against is still the
    champion (else the result is {"promoted": False, "stale": True}); force=True skips that check
    (a person promoting by hand).
    """
    client = connect(check_server())
    name = model_name(name=name)
    version = int(version)
    decision = dict(decision or {"reason": "manual promotion", "champion_version": None})
    kind = decision.get("kind") or ("manual_promotion" if force else "promotion")
    client.get_model_version(name, str(version))  # fails clearly if the version does not exist
    with promotion_lock(client, name):
        current = alias_version(client, name, CHAMPION)
        if current == version:
            # Checked before the stale test, so promote is idempotent: an Airflow retry after the
            # first try moved the alias finds its own work done (not a "stale" decision), and
            # records the move if that try crashed before writing the audit entry.
            _record_missing_promotion(client, name, version, decision, kind)
            if not str(client.get_model_version(name, str(version)).tags.get("decision", "")).startswith("promoted"):
                tag_version(client, name, version, _decision_tags(decision, "promoted" if not force
                                                                 else "promoted_manually"))
                _log_decision_scores(client, name, version, decision)
            return {"promoted": False, "already": True, "stale": False, "version": version,
                    "champion": current, "reason": f"v{version} is already the champion"}
        expected = decision.get("champion_version")
        if not force and (None if expected is None else int(expected)) != current:
            reason = (f"stale decision: it compared v{version} with champion "
                      f"{'v' + str(expected) if expected else 'none'}, but the champion is now "
                      f"{'v' + str(current) if current else 'none'}; evaluate again")
            tag_version(client, name, version, {**_decision_tags(decision, "stale"), "decision_reason": reason})
            _log_decision_scores(client, name, version, decision)
            return {"promoted": False, "stale": True, "version": version, "champion": current, "reason": reason}
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS, str(current))
        client.set_registered_model_alias(name, CHAMPION, str(version))
        _record(client, name, decision, kind=kind, from_version=current, to_version=version)
        tags = _decision_tags(decision, "promoted" if not force else "promoted_manually")
        tags["promoted_over"] = str(current) if current is not None else "none"
        tag_version(client, name, version, tags)
        _log_decision_scores(client, name, version, decision)
        _card_decision(client, name, version, tags["decision"], str(decision.get("reason", "")))
        if current is not None:
            tag_version(client, name, current, {"replaced_by": str(version), "replaced_at": now()})
        after = alias_version(client, name, CHAMPION)
        if after != version:  # only possible if someone bypassed the lock
            raise PromotionError(f"champion alias reads v{after} right after setting v{version}")
    return {"promoted": True, "stale": False, "version": version, "champion": version,
            "previous_champion": current, "reason": decision.get("reason", "")}


def _record(client, name: str, decision: dict, extra: dict | None = None, **move) -> dict:
    """The audit entry of a decision applied to the champion alias (who, why, the sign-off)."""
    extra = {"dag_run_id": decision.get("dag_run_id"), **(extra or {})}
    return audit.record(client, name, reason=str(decision.get("reason", "")), actor=decision.get("actor"),
                        approval=decision.get("approval"), extra=extra, **move)


def _record_missing_promotion(client, name: str, version: int, decision: dict, kind: str) -> None:
    """Record the move to champion `version` unless the trail's last champion move already is it
    (a retried promote whose first try crashed between the move and its entry). The version it
    replaced is then read from previous_champion, which the first try set."""
    last = audit.last_champion_move(client, name)
    if last is None or last["to_version"] != version:
        _record(client, name, decision, {"recorded_late": "true"}, kind=kind,
                from_version=alias_version(client, name, PREVIOUS), to_version=version)


def make_challenger(client, name: str, version: int, reason: str) -> None:
    """Alias `version` challenger (a newly trained candidate), recorded in the audit trail."""
    with promotion_lock(client, name):
        before = alias_version(client, name, CHALLENGER)
        client.set_registered_model_alias(name, CHALLENGER, str(version))
        audit.record(client, name, kind="challenger", alias=CHALLENGER, from_version=before, to_version=version,
                     reason=reason)


def reject(version: int, decision: dict, *, name: str | None = None) -> dict:
    """Record a non-promotion on the version (it keeps the `challenger` alias)."""
    client = connect(check_server())
    name = model_name(name=name)
    tag_version(client, name, int(version), _decision_tags(decision, "rejected"))
    _log_decision_scores(client, name, int(version), decision)
    _card_decision(client, name, int(version), "rejected", str(decision.get("reason", "")))
    champion = alias_version(client, name, CHAMPION)
    # not a move, but reviewers read refusals in the same trail; an Airflow retry records it once
    if not audit.find(audit.timeline(client, name, CHAMPION), kind="rejection", to_version=int(version),
                      reason=str(decision.get("reason", ""))[:5000]):
        _record(client, name, decision, kind="rejection", from_version=champion, to_version=int(version))
    return {"promoted": False, "version": int(version), "champion": champion,
            "reason": decision.get("reason", "")}


def rollback(*, name: str | None = None, reason: str = "manual rollback", actor: str | None = None) -> dict:
    """Champion <- previous_champion. previous_champion <- the version that one had replaced, so
    repeated rollbacks walk back through the promotion history."""
    from mlflow.exceptions import MlflowException

    client = connect(check_server())
    name = model_name(name=name)
    with promotion_lock(client, name):
        current = alias_version(client, name, CHAMPION)
        previous = alias_version(client, name, PREVIOUS)
        if previous is None:
            raise PromotionError(f"'{name}' has no '{PREVIOUS}' alias: nothing to roll back to")
        client.set_registered_model_alias(name, CHAMPION, str(previous))
        before = client.get_model_version(name, str(previous)).tags.get("promoted_over", "none")
        if before.isdigit() and int(before) not in (previous, current):
            client.set_registered_model_alias(name, PREVIOUS, before)
        else:
            try:
                client.delete_registered_model_alias(name, PREVIOUS)
            except MlflowException:
                pass
        audit.record(client, name, kind="rollback", from_version=current, to_version=previous, reason=reason,
                     actor=actor)
        if current is not None:
            tag_version(client, name, current, {"decision": "rolled_back", "decision_reason": reason,
                                                 "decided_at": now(), "rolled_back_to": str(previous)})
        tag_version(client, name, previous, {"restored_at": now(), "restored_from": str(current)})
    return {"champion": previous, "rolled_back_from": current,
            "previous_champion": alias_version(client, name, PREVIOUS), "reason": reason}

