"""Thin views: ask the champion holder for a model, hand the upload to diagnosis.analysis."""
from __future__ import annotations

import logging
import mimetypes
from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_not_required
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from . import analysis, ratelimit
from .champion import RegistryUnavailable, holder, model_card
from .forms import UploadForm
from .models import ApiToken, Confirmation, Diagnosis

log = logging.getLogger(__name__)

IMAGE_KINDS = ("image", "display", "thumb", "heatmap")


def _wants_json(request) -> bool:
    return request.headers.get("x-requested-with") == "XMLHttpRequest" or \
        "application/json" in request.headers.get("accept", "")


def _content_length(request) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _too_big(request, files: int | None = None) -> bool:
    """Refuse an oversized body from its header, before Django reads it."""
    files = settings.XRAY_MAX_FILES if files is None else files
    return _content_length(request) > settings.XRAY_MAX_REQUEST_BYTES * max(1, files)


def _no_champion(request, json: bool):
    status = holder().status()
    if json:
        return JsonResponse({"error": "no_champion", "detail": no_champion_text(status)}, status=503)
    return render(request, "diagnosis/no_champion.html", {"status": status,
                                                          "detail": no_champion_text(status)}, status=503)


def no_champion_text(status: dict) -> str:
    reg = status["registry"]
    if reg["reachable"] is False:
        return ("The model registry cannot be reached and no model has been loaded yet, "
                "so no image can be analysed right now.")
    return (f"No model has been approved for clinical use yet: the registry has no "
            f"'{reg['alias']}' version of '{reg['model_name']}'.")


def index(request):
    return redirect("upload")


@require_http_methods(["GET", "POST"])
def upload(request):
    json = _wants_json(request)
    if request.method == "GET":
        champion = holder().get()
        if champion is None:
            return _no_champion(request, json=False)
        return render(request, "diagnosis/upload.html", {"form": UploadForm(max_files=settings.XRAY_MAX_FILES),
                                                          "champion": champion})
    if _too_big(request):
        return _upload_errors(request, json, [("", "upload too large: send fewer or smaller images "
                                               f"(at most {settings.XRAY_MAX_UPLOAD_MB:g} MB each)")])
    champion = holder().get()
    if champion is None:
        return _no_champion(request, json)
    try:
        ratelimit.check_uploads(request, request.user)  # before the body is parsed
        form = UploadForm(request.POST, request.FILES, max_files=settings.XRAY_MAX_FILES)
        if form.is_valid():
            ratelimit.check_uploads(request, request.user, len(form.cleaned_data["images"]) - 1)
    except ratelimit.RateLimited as exc:
        return _rate_limited(request, json, exc)
    if not form.is_valid():
        if json:
            return JsonResponse({"error": "invalid_upload", "detail": " ".join(
                e for errs in form.errors.values() for e in errs)}, status=400)
        return render(request, "diagnosis/upload.html", {"form": form, "champion": champion}, status=400)
    done, failed = [], []
    for f in form.cleaned_data["images"]:
        # each file on its own: one that fails, whatever the cause, must not turn the files
        # already stored into a 500 (issue 25 item 14)
        try:
            done.append(analysis.diagnose(request.user, f.name, analysis.read_upload(f), champion, source="web"))
        except analysis.UploadRejected as exc:
            failed.append((f.name, exc.reason))
        except Exception:
            log.exception("upload of one file failed (user %s)", request.user.pk)
            failed.append((f.name, "could not be analysed (internal error, logged for the administrators)"))
    if json:
        if failed and not done:
            return JsonResponse({"error": "invalid_image", "detail": failed[0][1],
                                 "files": [{"name": n, "error": r} for n, r in failed]}, status=400)
        return JsonResponse({"results": [d.to_api() for d in done],
                             "errors": [{"name": n, "error": r} for n, r in failed]})
    if len(done) == 1 and not failed:
        return redirect(done[0])
    if not done:
        return _upload_errors(request, False, failed, champion)
    for name, reason in failed:
        messages.error(request, f"{name}: {reason}")
    messages.success(request, f"{len(done)} image{'s' if len(done) != 1 else ''} analysed.")
    return redirect("history")


def _rate_limited(request, json: bool, exc):
    headers = {"Retry-After": str(exc.retry_after)}
    if json:
        return JsonResponse({"error": "rate_limited", "detail": exc.detail}, status=429, headers=headers)
    response = render(request, "diagnosis/upload.html", {
        "form": UploadForm(max_files=settings.XRAY_MAX_FILES), "champion": holder().peek(),
        "file_errors": [("", exc.detail)]}, status=429)
    response["Retry-After"] = headers["Retry-After"]
    return response


def _upload_errors(request, json: bool, failed, champion=None):
    if json:
        return JsonResponse({"error": "invalid_image", "detail": failed[0][1],
                             "files": [{"name": n, "error": r} for n, r in failed]}, status=400)
    return render(request, "diagnosis/upload.html", {
        "form": UploadForm(max_files=settings.XRAY_MAX_FILES), "champion": champion or holder().peek(),
        "file_errors": failed}, status=400)


@require_GET
def result(request, pk):
    diagnosis = _viewable(request.user, pk, queue=False)  # 404, not 403: no probing
    return render(request, "diagnosis/result.html", {"d": diagnosis, "labels": Confirmation.LABELS,
                                                     "confirmation": getattr(diagnosis, "confirmation", None)})


@require_GET
def card(request, version: str):
    """The model card of a registered version, for staff (doctors see the version on each result)."""
    if not request.user.is_staff or not version.isdigit():
        raise Http404
    from markdown_it import MarkdownIt

    try:
        text = model_card(str(version))
    except LookupError:
        raise Http404 from None
    except RegistryUnavailable as exc:
        return render(request, "diagnosis/model_card.html", {"version": version, "error": str(exc)}, status=503)
    html = MarkdownIt("commonmark", {"html": False}).enable("table").render(text or "*No model card.*")
    return render(request, "diagnosis/model_card.html", {"version": version, "card": html})


@require_GET
def history(request):
    page = Paginator(Diagnosis.objects.filter(owner=request.user).select_related("confirmation").order_by("-created"),
                     settings.XRAY_HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "diagnosis/history.html", {"page": page})


@require_GET
def image(request, pk, kind):
    if kind not in IMAGE_KINDS:
        raise Http404
    diagnosis = _viewable(request.user, pk)
    try:
        path = analysis.derived_path(diagnosis, kind)
        handle = open(path, "rb")
    except (FileNotFoundError, analysis.UploadRejected):
        raise Http404 from None
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    response = FileResponse(handle, content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    response["Content-Security-Policy"] = "default-src 'none'"
    return response


def _viewable(user, pk, queue: bool = True) -> Diagnosis:
    """The user's own result; a PACS result for every signed-in doctor and staff member (the
    hospital's studies, read from the worklist: docs/pacs.md); for staff also a result in the
    adjudication queue (open or ruled, `queue`), whose film they must read to rule on it. Any other
    result is a 404, as if it did not exist."""
    from .local_cases import disagreements

    diagnosis = Diagnosis.objects.filter(pk=pk).first()
    if diagnosis is not None and (diagnosis.owner_id == user.pk or diagnosis.source == "pacs" or (
            queue and user.is_staff and disagreements(open_only=False).filter(diagnosis=diagnosis).exists())):
        return diagnosis
    raise Http404


@require_http_methods(["GET", "POST"])
def api_token(request):
    new_key = None
    if request.method == "POST":
        action = request.POST.get("action")
        if action in ("revoke", "rotate"):
            token_id = request.POST.get("token", "")
            if not (token_id.isascii() and token_id.isdigit() and len(token_id) <= 18):  # fits a bigint
                return HttpResponseBadRequest("invalid token id")
            token = get_object_or_404(ApiToken, user=request.user, pk=int(token_id))
            token.delete()
            if action == "revoke":
                messages.success(request, "Token revoked.")
                return redirect("api_token")
            # rotation: the same name, a new key and a new expiry; the old key stops at once
            _, new_key = ApiToken.issue(request.user, token.name)
        else:
            name = (request.POST.get("name") or "API").strip()[:100] or "API"
            _, new_key = ApiToken.issue(request.user, name)
    tokens = ApiToken.objects.filter(user=request.user)
    response = render(request, "diagnosis/api_token.html", {"tokens": tokens, "new_key": new_key,
                                                             "token_days": settings.XRAY_API_TOKEN_DAYS})
    response["Cache-Control"] = "no-store"
    return response


@login_not_required  # load balancers and monitors
@require_GET
@never_cache
def healthz(request):
    """Liveness and model status. 200 while the process serves; `?ready=1` answers 503 until a
    champion is loaded (for load balancers that should only route to a process that can answer).

    The public answer says only whether the site can answer and with which version (the version
    is on every result anyway); run id, threshold, engine and registry errors help an attacker
    more than a monitor, so they are for signed-in staff only: `?detail=1` (issue 25 item 16)."""
    h = holder()
    h.get(wait=False)  # never blocks: loads / re-checks the alias in the background when due
    status = h.status()
    healthy = status["champion_loaded"] and status["registry"]["reachable"] is not False
    code = 503 if request.GET.get("ready") and not status["champion_loaded"] else 200
    if request.GET.get("detail") and request.user.is_authenticated and request.user.is_staff:
        return JsonResponse({"status": "ok" if healthy else "degraded", **status}, status=code)
    champion = status["champion"]
    return JsonResponse({"status": "ok" if healthy else "degraded", "champion_loaded": status["champion_loaded"],
                         "champion": {"version": champion["version"]} if champion else None}, status=code)


@staff_member_required
@require_GET
def drift(request):
    """Staff: the inputs' drift against the champion's training X-rays, day by day (pipeline.evaluation.drift)."""
    from django.utils.safestring import mark_safe

    from . import monitoring

    champion = holder().peek()
    gate = getattr(getattr(champion, "predictor", None), "gate", None)
    reference = (gate.state or {}).get("reference") if gate is not None else None
    span = request.GET.get("days", "30")
    days = monitoring.daily(reference, days=min(365, max(2, int(span))) if span.isdigit() else 30)
    since = timezone.now() - timedelta(days=len(days))
    return render(request, "diagnosis/drift.html", {
        "days": [(d, r) for d, r in reversed(days) if r.n], "chart": mark_safe(monitoring.svg_chart(days)),
        "series": monitoring.SERIES, "reasons": monitoring.refusal_reasons(since), "gate": gate,
        "reference": reference})


# --- the second sign-in step for staff (diagnosis.mfa) ------------------------------------------------
def _mfa_next(request) -> str:
    from django.utils.http import url_has_allowed_host_and_scheme

    nxt = request.POST.get("next") or request.GET.get("next") or ""
    return nxt if url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}) else "/"


@require_http_methods(["GET", "POST"])
@never_cache
def mfa_verify(request):
    """Type the authenticator's code (staff); without an authenticator yet, enrol first."""
    from . import mfa
    from .models import StaffTotp

    if not request.user.is_staff:
        return redirect("index")
    device = StaffTotp.objects.filter(user=request.user, confirmed=True).first()
    if device is None:
        return redirect(f"{reverse('mfa_setup')}?{urlencode({'next': _mfa_next(request)})}")
    error = None
    if request.method == "POST":
        step = mfa.matching_step(device.secret, request.POST.get("code", ""))
        # accepted once: the row's last step moves forward only if nobody used this code before
        if step is not None and StaffTotp.objects.filter(pk=device.pk, last_step__lt=step).update(last_step=step):
            mfa.mark_verified(request)
            return redirect(_mfa_next(request))
        error = "That code is not valid (or was already used). Type the current code of your authenticator."
    return render(request, "registration/mfa_verify.html", {"error": error, "next": _mfa_next(request)},
                  status=400 if error else 200)


@require_http_methods(["GET", "POST"])
@never_cache
def mfa_setup(request):
    """Enrol an authenticator: show a new secret, confirm it with one code from the app."""
    from . import mfa
    from .models import StaffTotp

    if not request.user.is_staff:
        return redirect("index")
    device, _ = StaffTotp.objects.get_or_create(user=request.user, defaults={"secret": mfa.new_secret()})
    if device.confirmed:  # one authenticator; a lost one is deleted by an administrator (admin)
        return redirect(f"{reverse('mfa_verify')}?{urlencode({'next': _mfa_next(request)})}")
    error = None
    if request.method == "POST":
        step = mfa.matching_step(device.secret, request.POST.get("code", ""))
        if step is not None:
            device.confirmed, device.last_step = True, step
            device.save()
            mfa.mark_verified(request)
            return redirect(_mfa_next(request))
        error = "That code does not match: check the key you typed and your device's clock."
    response = render(request, "registration/mfa_setup.html", {
        "secret": device.secret, "uri": mfa.provisioning_uri(device.secret, request.user.get_username()),
        "error": error, "next": _mfa_next(request)}, status=400 if error else 200)
    response["Cache-Control"] = "no-store"
    return response
