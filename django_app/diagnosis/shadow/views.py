"""Staff: what the pending challenger (or an earlier shadowed version) answered in the background."""
from __future__ import annotations

import logging
import mimetypes
from datetime import datetime

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from .. import analysis
from ..models import ShadowAnswer
from . import figures, runner

log = logging.getLogger(__name__)
IMAGES = ("display", "heatmap", "shadow")  # the film, the champion's heat map, the challenger's


def pending_version(name: str) -> str | None:
    """The registry's pending challenger now (None when there is none or MLflow does not answer)."""
    from pipeline.mlops import server

    try:
        version = runner.pending(server.client_of(settings.MLFLOW_TRACKING_URI), name)
    except Exception as exc:  # noqa: BLE001 - the page still shows what was recorded
        log.warning("shadow page: registry not asked (%s)", exc)
        return None
    return None if version is None else str(version)


def _rows(paired: dict) -> list[dict]:
    """One table row per figure: challenger, champion and the paired difference."""
    if not paired["n"]:
        return []
    return [{"name": key, "cells": [paired["a"][key], paired["b"][key], paired["difference"][key]]}
            for key in figures.FIGURES]


@staff_member_required
@require_GET
def page(request):
    name = settings.XRAY_MODEL_NAME
    pending = pending_version(name)
    shadowed = figures.versions(name)
    choices = ([pending] if pending and pending not in shadowed else []) + shadowed
    version = request.GET.get("version", "")
    version = version if version in choices else (pending or (choices[0] if choices else None))
    context = {"name": name, "pending": pending, "choices": choices, "version": version,
               "enabled": settings.XRAY_SHADOW, "queue_size": settings.XRAY_SHADOW_QUEUE}
    if version is not None:
        paired, counts = figures.confirmed(name, version), figures.counts(name, version)
        context.update(counts=counts, paired=paired, rows=_rows(paired), gallery=figures.disagreements(name, version),
                       since=datetime.fromisoformat(counts["since"]) if counts["since"] else None)
    return render(request, "diagnosis/shadow.html", context)


@staff_member_required
@require_GET
def image(request, pk: int, kind: str):
    """The film and both heat maps of a shadowed result, for staff (the gallery of disagreements)."""
    if kind not in IMAGES:
        raise Http404
    row = get_object_or_404(ShadowAnswer.objects.select_related("diagnosis"), pk=pk)
    try:
        if kind == "shadow":
            if not row.heatmap:
                raise FileNotFoundError
            path = row.heatmap.path
        else:
            path = analysis.derived_path(row.diagnosis, kind)
        handle = open(path, "rb")
    except (FileNotFoundError, analysis.UploadRejected):
        raise Http404 from None
    response = FileResponse(handle, content_type=mimetypes.guess_type(str(path))[0] or "application/octet-stream")
    response["Cache-Control"] = "private, max-age=3600"
    response["Content-Security-Policy"] = "default-src 'none'"
    return response
