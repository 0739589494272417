"""Staff: the audit trail of the served model's aliases (pipeline.mlops.audit), newest first, and
which version served at a given time. Read from the MLflow server that keeps the registry, with the
site's read-only login; each result page links here (#v<version>) to the decision that put its
version in service."""
from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .champion import holder


def _anchors(entries: list[dict], sign_offs) -> dict[str, int]:
    """run id -> version, for the latest entry that put each version in service (#v<version>)."""
    latest = {}
    for e in entries:   # oldest first: later ones overwrite
        if e["kind"] in sign_offs and e["to_version"] is not None:
            latest[e["to_version"]] = e["id"]
    return {run_id: version for version, run_id in latest.items()}


def _ask(client, name: str, at: str) -> tuple[dict | None, str | None]:
    """(served_at answer, None) or (None, why not) for the time typed in the form."""
    from pipeline.mlops import audit

    try:
        return audit.ask(client, name, at), None
    except ValueError:
        return None, f"“{at}” is not a date or a date and time (e.g. 2026-03-03 14:30)."
    except audit.NoAuditEntry as exc:
        return None, str(exc)


@staff_member_required
@require_GET
def model_history(request):
    from pipeline.mlops import audit, server

    registry = holder().registry   # the registered model that serves this site
    at = request.GET.get("at", "").strip()
    context = {"name": registry.name, "at": at, "experiment": audit.experiment_name(registry.name)}
    try:
        client = server.client_of(server.check_server(registry.tracking_uri, timeout=3))
        entries = audit.timeline(client, registry.name)
        if at:
            context["answer"], context["at_error"] = _ask(client, registry.name, at)
    except Exception as exc:  # noqa: BLE001 - server down, refused, timeouts: the page says so
        context["error"] = str(exc).splitlines()[0][:300]
        return render(request, "diagnosis/model_history.html", context, status=503)
    anchors = _anchors(entries, audit.SIGN_OFFS)
    for e in entries:
        e["anchor"] = anchors.get(e["id"])
        e["when"] = audit.parse_time(e["at"]) if e["at"] else None
    moves = [e for e in entries if e["kind"] in audit.CHAMPION_MOVES]
    context.update(entries=entries[::-1], serving=moves[-1] if moves else None)
    return render(request, "diagnosis/model_history.html", context)
