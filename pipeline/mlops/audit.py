"""The audit trail of the registry: every alias move, with who, when, why, from and to.

Storage: an MLflow experiment `<model name>-audit` on the tracking server that keeps the registry
(PostgreSQL in production), one run per entry, everything in tags (audit.kind, audit.alias,
audit.from_version, audit.to_version, audit.actor, audit.reason, audit.at, audit.approved_by /
audit.approved_at / audit.approval_comment when a person signed off, audit.dag_run_id when known).
No second store to back up or secure: the registry's database and permissions cover it. Entries
are only ever created, never edited; a run deleted in the MLflow UI still shows (marked deleted)
until the server's garbage collection purges it.

Writers: pipeline.mlops.aliases (promote, rollback, reject, the challenger alias), under the
promotion lock right after the move. Readers: `python -m pipeline history` and the site's staff
page /staff/models/. Times are the writer's clock in UTC (hosts are expected to keep NTP time).
"""
from __future__ import annotations

import datetime as dt
import getpass
import os
import socket

from pipeline.mlops.server import CHAMPION

KINDS = ("promotion", "manual_promotion", "rollback", "site_adaptation", "challenger", "rejection")
CHAMPION_MOVES = ("promotion", "manual_promotion", "rollback", "site_adaptation")  # kinds that change who serves
SIGN_OFFS = ("promotion", "manual_promotion", "site_adaptation")  # a decision to serve a version (not a rollback)
TAG = "audit."


class NoAuditEntry(LookupError):
    """The trail has no entry that answers the question (no move recorded yet, or none that early)."""


def experiment_name(name: str) -> str:
    return f"{name}-audit"


def default_actor() -> str:
    """Who moves an alias when the caller does not say: $XRAY_ACTOR, else the Airflow task's DAG run
    (Airflow exports its context to the task's environment), else <os user>@<host>."""
    if os.environ.get("XRAY_ACTOR"):
        return os.environ["XRAY_ACTOR"]
    if os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"):
        return f"airflow:{os.environ.get('AIRFLOW_CTX_DAG_ID', '?')}/{os.environ['AIRFLOW_CTX_DAG_RUN_ID']}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _experiment_id(client, name: str) -> str:
    """The audit experiment's id, created on the first entry (a deleted one is restored: the trail
    is not hidden by deleting it in the UI)."""
    from mlflow.exceptions import MlflowException

    exp_name = experiment_name(name)
    for _ in range(2):
        exp = client.get_experiment_by_name(exp_name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return client.create_experiment(exp_name, tags={
                "audit.model": name, "mlflow.note.content": f"Audit trail of the aliases of registered model "
                                                            f"'{name}': one run per move (pipeline.mlops.audit)."})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another writer created it first: read it
                raise
    raise RuntimeError(f"audit experiment {exp_name} could neither be created nor read")


def _v(version) -> str:
    return "none" if version is None else f"v{int(version)}"


def record(client, name: str, *, kind: str, from_version, to_version, reason: str, actor: str | None = None,
           approval: dict | None = None, alias: str = CHAMPION, extra: dict | None = None) -> dict:
    """Append one entry to the trail of registered model `name`; returns it as timeline() would.

    approval: {"by", "at", "comment", ...} of the person who signed the decision off, if any.
    extra: more facts, tagged audit.<key> (dag_run_id: the DAG run; defaults to Airflow's context)."""
    if kind not in KINDS:
        raise ValueError(f"unknown audit kind {kind!r}; one of {', '.join(KINDS)}")
    at = dt.datetime.now(dt.timezone.utc)
    tags = {"kind": kind, "alias": alias, "from_version": "none" if from_version is None else str(int(from_version)),
            "to_version": "none" if to_version is None else str(int(to_version)),
            "actor": str(actor or default_actor()), "reason": str(reason or "")[:5000],
            "at": at.isoformat(timespec="microseconds"), "model": name}
    if approval:
        tags.update({"approved_by": str(approval.get("by", "")), "approved_at": str(approval.get("at", "")),
                     "approval_comment": str(approval.get("comment", ""))[:5000]})
        if approval.get("via"):
            tags["approval_via"] = str(approval["via"])
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    extra.setdefault("dag_run_id", os.environ.get("AIRFLOW_CTX_DAG_RUN_ID"))
    tags.update({str(k): str(v) for k, v in extra.items() if v is not None and str(k) not in tags})
    run_name = f"{kind} {_v(from_version)} -> {_v(to_version)}"
    run = client.create_run(_experiment_id(client, name), start_time=int(at.timestamp() * 1000), run_name=run_name,
                            tags={f"{TAG}{k}": v for k, v in tags.items()})
    # update_run, not set_terminated: that one prints a "View run" line into the CLI's --json output
    client.update_run(run.info.run_id, status="FINISHED")
    return _entry(run.info.run_id, run_name, tags, deleted=False)


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _entry(run_id: str, run_name: str, tags: dict[str, str], deleted: bool) -> dict:
    known = {"kind", "alias", "from_version", "to_version", "actor", "reason", "at", "model", "approved_by",
             "approved_at", "approval_comment", "approval_via", "dag_run_id"}
    approval = ({"by": tags["approved_by"], "at": tags.get("approved_at", ""),
                 "comment": tags.get("approval_comment", ""), "via": tags.get("approval_via", "")}
                if tags.get("approved_by") else None)
    return {"id": run_id, "title": run_name, "kind": tags.get("kind", ""), "alias": tags.get("alias", ""),
            "from_version": _int(tags.get("from_version")), "to_version": _int(tags.get("to_version")),
            "actor": tags.get("actor", ""), "reason": tags.get("reason", ""), "at": tags.get("at", ""),
            "approval": approval, "dag_run_id": tags.get("dag_run_id"), "deleted": deleted,
            "extra": {k: v for k, v in tags.items() if k not in known}}


def parse_time(text: str | dt.datetime) -> dt.datetime:
    """An ISO date or date-time as an aware UTC datetime (no zone given: UTC)."""
    when = text if isinstance(text, dt.datetime) else dt.datetime.fromisoformat(str(text).strip())
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)


def timeline(client, name: str, alias: str | None = None) -> list[dict]:
    """Every entry of `name`'s trail (of one alias when given), oldest first. [] when there is none."""
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(experiment_name(name))
    if exp is None:
        return []
    query = f"tags.`{TAG}alias` = '{alias}'" if alias else ""
    entries, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=query, run_view_type=ViewType.ALL,
                                  max_results=1000, page_token=token)
        for run in page:
            tags = {k[len(TAG):]: v for k, v in run.data.tags.items() if k.startswith(TAG)}
            if tags.get("kind") in KINDS:
                entries.append((run.info.start_time or 0, _entry(run.info.run_id, run.info.run_name or "", tags,
                                                                 run.info.lifecycle_stage == "deleted")))
        token = page.token
        if not token:
            break
    entries.sort(key=lambda e: (parse_time(e[1]["at"]) if e[1]["at"] else dt.datetime.min.replace(
        tzinfo=dt.timezone.utc), e[0]))
    return [e for _, e in entries]


def last_champion_move(client, name: str) -> dict | None:
    """The latest entry that changed the champion (None: none recorded)."""
    moves = [e for e in timeline(client, name, CHAMPION) if e["kind"] in CHAMPION_MOVES]
    return moves[-1] if moves else None


def served_at(client, name: str, when: dt.datetime | str) -> dict:
    """Which version was the champion at `when`: the last champion move at or before it, who made it
    and why, and the decision that put that version in service (after a rollback: the promotion it
    returned to), with its approval. Raises NoAuditEntry when no move is recorded that early."""
    when = parse_time(when)
    moves = [e for e in timeline(client, name, CHAMPION) if e["kind"] in CHAMPION_MOVES]
    before = [e for e in moves if parse_time(e["at"]) <= when]
    if not before:
        first = f"; the first recorded move is {moves[0]['at']}" if moves else ""
        raise NoAuditEntry(f"no champion move of '{name}' recorded at or before {when.isoformat()}{first}")
    move = before[-1]
    version = move["to_version"]
    signed = [e for e in before if e["kind"] in SIGN_OFFS and e["to_version"] == version]
    decision = signed[-1] if signed else move
    following = next((e for e in moves if parse_time(e["at"]) > when), None)
    return {"model": name, "at": when.isoformat(), "version": version, "since": move["at"],
            "until": following["at"] if following else None, "moved_by": move["actor"], "kind": move["kind"],
            "reason": move["reason"], "approval": decision["approval"], "decided_by": decision["actor"],
            "decision_reason": decision["reason"], "entry": move, "decision": decision}


def ask(client, name: str, text: str) -> dict:
    """served_at for an ISO date-time. For a bare date (a whole day asked: "which model answered on
    3 March?"), the champion at 00:00 UTC (version None when there was none yet) and, in "same_day",
    every champion move of that day. Raises ValueError for text that is no ISO date."""
    when = parse_time(text)
    whole_day = len(str(text).strip()) == 10
    try:
        answer, none_yet = served_at(client, name, when), None
    except NoAuditEntry as exc:
        if not whole_day:
            raise
        answer, none_yet = {"model": name, "at": when.isoformat(), "version": None}, exc
    if whole_day:
        answer["same_day"] = [e for e in timeline(client, name, CHAMPION) if e["kind"] in CHAMPION_MOVES
                              and when < parse_time(e["at"]) < when + dt.timedelta(days=1)]
        if none_yet is not None and not answer["same_day"]:
            raise none_yet
    return answer


def find(entries: list[dict], **match) -> list[dict]:
    """The entries whose fields equal every `match` (e.g. kind="rejection", to_version=5)."""
    return [e for e in entries if all(e.get(k) == v for k, v in match.items())]


# ------------------------------------------------------------------------------- text for people
def format_timeline(entries: list[dict], total: int | None = None) -> str:
    lines = [f"{'when (UTC)':<20} {'kind':<17} {'alias':<18} {'from -> to':<13} {'actor':<28} {'approved by':<14} reason"]
    for e in entries:
        when = e["at"][:19].replace("T", " ")
        move = f"{_v(e['from_version'])} -> {_v(e['to_version'])}"
        approved = (e["approval"] or {}).get("by") or "-"
        reason = e["reason"] if len(e["reason"]) <= 90 else e["reason"][:87] + "..."
        lines.append(f"{when:<20} {e['kind']:<17} {e['alias']:<18} {move:<13} {e['actor']:<28} {approved:<14} "
                     f"{reason}{' [deleted in MLflow]' if e['deleted'] else ''}")
    if total is not None and total > len(entries):
        lines.append(f"(the last {len(entries)} of {total} entries; --limit 0 shows all)")
    return "\n".join(lines)


def format_served(ans: dict) -> str:
    day = [f"  then that day: {e['at']} {e['kind']} v{e['to_version']} by {e['actor']}: {e['reason']}"
           for e in ans.get("same_day", [])]
    if ans["version"] is None:
        return "\n".join([f"{ans['model']} at {ans['at']}: no champion yet", *day])
    approval = ans["approval"]
    signed = (f"approved by {approval['by']} at {approval['at']}" + (f": {approval['comment']}" if approval.get(
        "comment") else "")) if approval else "no sign-off recorded (approval: auto)"
    lines = [f"{ans['model']} at {ans['at']}: v{ans['version']} was the champion",
             f"  since {ans['since']} ({ans['kind']} by {ans['moved_by']}: {ans['reason']})",
             f"  until {ans['until'] or 'now'}"]
    if ans["decision"] is not ans["entry"]:
        lines.append(f"  put in service by {ans['decided_by']} at {ans['decision']['at']}: {ans['decision_reason']}")
    lines.append(f"  {signed}")
    return "\n".join(lines + day)
