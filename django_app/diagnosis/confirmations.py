"""Views of the site's local evidence (diagnosis.local_cases): a doctor confirms a result (page and
API), staff rule on the confirmations that disagree with the model, and see what the served
answers achieved on the confirmed cases."""
from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from . import local_cases, ratelimit
from .auth import AuthFailed, authenticate_api
from .models import Confirmation, Diagnosis

RECENT = 20  # adjudicated confirmations listed under the queue
QUEUE = 100  # open ones shown at once (oldest first; the count says how many wait)


def _error(exc: ValidationError) -> str:
    return " ".join(exc.messages)


@require_POST
def confirm(request, pk):
    """The result page's form: the known diagnosis of one's own result (others: 404, no probing)."""
    diagnosis = get_object_or_404(Diagnosis, pk=pk, owner=request.user)
    try:
        ratelimit.check_confirmations(request, request.user)
        local_cases.confirm(diagnosis, request.user, request.POST.get("label", ""), request.POST.get("note", ""))
    except ratelimit.RateLimited as exc:
        messages.error(request, exc.detail)
    except ValidationError as exc:
        messages.error(request, _error(exc))
    else:
        messages.success(request, "Confirmation recorded. Thank you: confirmed cases are how the site "
                                  "checks the model on this hospital's patients.")
    return redirect(diagnosis)


@login_not_required  # its own authentication (token or session), as api_predict
@csrf_exempt  # token clients have no CSRF cookie; session clients are CSRF-checked in authenticate_api
@never_cache
def api_confirmation(request, pk):
    """GET: the result with its confirmation. POST {"label", "note"}: confirm it (owner only)."""
    if request.method not in ("GET", "POST"):
        return JsonResponse({"error": "method_not_allowed", "detail": "use GET or POST"}, status=405,
                            headers={"Allow": "GET, POST"})
    try:
        user = authenticate_api(request)
    except AuthFailed as exc:
        return exc.response()
    diagnosis = Diagnosis.objects.filter(pk=pk, owner=user).first()
    if diagnosis is None:
        return JsonResponse({"error": "not_found", "detail": "no such result"}, status=404)
    if request.method == "POST":
        try:
            ratelimit.check_confirmations(request, user)
        except ratelimit.RateLimited as exc:
            return JsonResponse({"error": "rate_limited", "detail": exc.detail}, status=429,
                                headers={"Retry-After": str(exc.retry_after)})
        try:
            body = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("note", ""), str):
            return JsonResponse({"error": "invalid_json", "detail": 'send a JSON object {"label": ..., '
                                 '"note": ...}'}, status=400)
        try:
            local_cases.confirm(diagnosis, user, str(body.get("label") or ""), body.get("note") or "")
        except ValidationError as exc:
            return JsonResponse({"error": "invalid_label", "detail": _error(exc)}, status=400)
        diagnosis.refresh_from_db()  # drops the cached (absent) confirmation
    return JsonResponse(diagnosis.to_api(request))


@staff_member_required
@require_GET
def queue(request):
    """Staff: confirmations that disagree with the model, oldest first, and the latest rulings."""
    open_ = local_cases.disagreements()
    recent = (local_cases.disagreements(open_only=False).exclude(adjudicated_label="")
              .order_by("-adjudicated_at")[:RECENT])
    return render(request, "diagnosis/confirmations.html", {
        "open": open_[:QUEUE], "open_count": open_.count(), "recent": recent, "labels": Confirmation.LABELS})


@staff_member_required
@require_POST
def adjudicate(request, pk):
    # only a confirmation in the queue (open or ruled): staff do not rewrite agreeing ones from here
    confirmation = get_object_or_404(local_cases.disagreements(open_only=False), pk=pk)
    try:
        local_cases.adjudicate(confirmation, request.user, request.POST.get("label", ""),
                               request.POST.get("note", ""))
    except ValidationError as exc:
        messages.error(request, _error(exc))
    else:
        messages.success(request, f"Ruled {confirmation.adjudicated_label} for the result of "
                                  f"{confirmation.diagnosis.created:%d %b %Y} ({confirmation.by}).")
    return redirect("confirmations")


@staff_member_required
@require_GET
def performance(request):
    """Staff: realised sensitivity / specificity per served model version and month."""
    return render(request, "diagnosis/performance.html", {"groups": local_cases.realised()})
