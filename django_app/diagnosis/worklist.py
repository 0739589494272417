"""The PACS worklist (docs/pacs.md): the studies the PACS sent, for every signed-in doctor."""
from __future__ import annotations

from django.core.paginator import Paginator
from django.db.models import Case, IntegerField, Value, When
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .models import PacsInstance


@require_GET
def worklist(request):
    """The PACS's studies in order of arrival (or by priority: PNEUMONIA first, most probable first),
    filtered by answer or accession number; every signed-in doctor sees them."""
    rows = PacsInstance.objects.exclude(state=PacsInstance.SKIPPED).select_related("diagnosis")
    show = request.GET.get("show", "")
    if show in ("PNEUMONIA", "NORMAL"):
        rows = rows.filter(diagnosis__label=show)
    elif show in ("refused", "pending"):
        rows = rows.filter(state__in=[show, "claimed"] if show == "pending" else [show])
    if (accession := request.GET.get("q", "").strip()[:64]):
        rows = rows.filter(accession_number__icontains=accession)
    sort = "priority" if request.GET.get("sort") == "priority" else "arrival"
    if sort == "priority":
        rows = rows.annotate(rank=Case(When(diagnosis__label="PNEUMONIA", then=Value(0)),
                                       When(diagnosis__isnull=False, then=Value(1)), default=Value(2),
                                       output_field=IntegerField())).order_by("rank", "-diagnosis__probability",
                                                                               "received")
    else:
        rows = rows.order_by("-received")
    page = Paginator(rows, 50).get_page(request.GET.get("page"))
    return render(request, "diagnosis/worklist.html", {"page": page, "sort": sort, "show": show,
                                                        "q": request.GET.get("q", "")})
