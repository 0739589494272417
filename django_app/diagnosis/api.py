"""The JSON API: `/api/v1/` (django-ninja), its OpenAPI 3 schema at /api/v1/schema and a docs page
at /api/v1/docs, and the first, unversioned routes (`/api/predict`, `/api/results/<id>/confirmation`)
kept as documented aliases until LEGACY_SUNSET (docs/web.md, "API").

Every route authenticates itself (an `Authorization: Token <key>` / `Bearer <key>` header, or the
site's session with its CSRF token: diagnosis.auth), counts against the caller's per-token and
per-user minute (diagnosis.ratelimit) and answers every refusal as {"error": code, "detail": text}
(ApiError), each status listed in the schema. One upload path: predict() serves both generations.
"""
from __future__ import annotations

from datetime import datetime, timezone
from uuid import UUID

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import ValidationError
from django.http import Http404, JsonResponse
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI, Query, Schema, Status
from ninja.errors import HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import APIKeyHeader

from . import analysis, local_cases, ratelimit
from .auth import ApiError, authenticate_api
from .champion import holder
from .models import Diagnosis
from .views import no_champion_text

# The unversioned routes answer until this date (then 410); they carry Deprecation/Sunset headers.
LEGACY_SUNSET = datetime(2027, 6, 30, 23, 59, 59, tzinfo=timezone.utc)
LEGACY_HEADERS = {"Deprecation": "true", "Sunset": LEGACY_SUNSET.strftime("%a, %d %b %Y %H:%M:%S GMT")}


class Error(Schema):
    error: str
    detail: str


class ImageOut(Schema):
    format: str
    width: int
    height: int
    name: str


class ConfirmationOut(Schema):
    label: str
    confirmed_label: str
    by: str
    at: str
    note: str
    adjudicated: bool
    adjudicated_by: str | None
    adjudicated_at: str | None


class ResultOut(Schema):
    id: UUID
    label: str
    probability: float
    threshold: float
    model_name: str
    model_version: str
    created: str
    image: ImageOut
    result_url: str
    heatmap_url: str | None
    heatmap_empty: bool | None
    inference_ms: float | None = None
    warning: str
    gate_score: float | None
    confirmation: ConfirmationOut | None
    confirmation_url: str


class ResultPage(Schema):
    count: int
    results: list[ResultOut]


class ConfirmationIn(Schema):
    label: str
    note: str = ""


class Health(Schema):
    status: str
    champion_loaded: bool
    champion_version: str | None


def _errors(*codes: int) -> dict:
    return {code: Error for code in codes}


AUTH_ERRORS = (401, 403, 429)
PREDICT_ERRORS = {400: "invalid_image: unreadable, wrong format, over the pixel or size limits",
                  401: "authentication_required / invalid_token", 403: "csrf_failed (session callers)",
                  413: "too_large: over the upload limit", 422: "not_a_chest_xray: readable, but refused by the "
                  "input gate (the reason says why)", 429: "rate_limited: see Retry-After",
                  503: "no_champion: no model approved for use yet, or the registry unreachable"}


class TokenAuth(APIKeyHeader):
    """The schema's security scheme; the check itself is diagnosis.auth's (token or session)."""
    param_name = "Authorization"

    def authenticate(self, request, key):
        return authenticate_api(request)   # AuthFailed (an ApiError) is answered by the handler below


api = NinjaAPI(
    title="Chest X-ray pneumonia assistant", version="1", urls_namespace="api_v1",
    docs_url="/docs", openapi_url="/schema", auth=TokenAuth(),
    description="Send a frontal chest X-ray (JPEG, PNG or DICOM); get NORMAL or PNEUMONIA with a calibrated "
                "probability, the threshold it was compared with and the model version. Authenticate with "
                "`Authorization: Token <key>` (create a key on /account/api-token/). Every error is "
                '`{"error": code, "detail": text}`.')


@api.exception_handler(ApiError)
def _api_error(request, exc: ApiError):
    return exc.response()


@api.exception_handler(NinjaValidationError)
def _invalid_request(request, exc):
    detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors)
    return ApiError(400, "invalid_request", detail or "invalid request").response()


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    """ninja's own refusals (no credentials, a body that is not JSON) in the API's one error shape."""
    if exc.status_code == 401:
        return ApiError(401, "authentication_required", "send an 'Authorization: Token <key>' header",
                        {"WWW-Authenticate": 'Token realm="api"'}).response()
    return ApiError(exc.status_code, "invalid_request", exc.message).response()


@api.exception_handler(Http404)
def _not_found(request, exc):
    return ApiError(404, "not_found", "no such result").response()


def predict(request, user) -> Diagnosis:
    """One upload through the site's one analysis path; ApiError for every refusal."""
    if analysis_too_big(request):
        raise ApiError(413, "too_large", f"upload too large (the limit is {settings.XRAY_MAX_UPLOAD_MB:g} MB)")
    try:
        ratelimit.check_uploads(request, user)
    except ratelimit.RateLimited as exc:
        raise ApiError(429, "rate_limited", exc.detail, {"Retry-After": str(exc.retry_after)}) from None
    champion = holder().get()
    if champion is None:
        raise ApiError(503, "no_champion", no_champion_text(holder().status()))
    try:
        name, data = _image(request)
        return analysis.diagnose(user, name, data, champion, source="api",
                                 heatmap=request.GET.get("heatmap") in ("1", "true", "yes"))
    except analysis.UploadRefused as exc:  # readable, but not a frontal chest X-ray
        raise ApiError(422, "not_a_chest_xray", exc.reason) from None
    except analysis.UploadRejected as exc:
        raise ApiError(400, "invalid_image", exc.reason) from None


def analysis_too_big(request) -> bool:
    """One file at the limit, from the Content-Length, before Django reads the body."""
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0) > settings.XRAY_MAX_REQUEST_BYTES
    except ValueError:
        return False


def _image(request) -> tuple[str, bytes]:
    """multipart/form-data with a file field `image` (or `file`), or the raw bytes as the body."""
    if (request.content_type or "").startswith("multipart/"):
        files = request.FILES.getlist("image") or request.FILES.getlist("file")
        if not files:
            raise analysis.UploadRejected("no image: send the file in a form field named 'image'")
        if len(files) > 1:
            raise analysis.UploadRejected("one image per API request")
        return files[0].name, analysis.read_upload(files[0])
    data = request.read(settings.XRAY_MAX_UPLOAD_BYTES + 1)
    analysis.check_size(len(data))
    return request.headers.get("x-filename", "upload"), data


def _timed(response, diagnosis: Diagnosis):
    response["Server-Timing"] = ", ".join(f"{k};dur={v:.1f}" for k, v in diagnosis.timings.items())
    return response


UPLOAD_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                       "properties": {"image": {"type": "string", "format": "binary"}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


@api.post("/predict", response={200: ResultOut, **_errors(*PREDICT_ERRORS)}, url_name="predict",
          summary="Analyse one chest X-ray", openapi_extra={"requestBody": UPLOAD_BODY},
          description="The answer for one image: the multipart field `image`, or the raw file as the body (then "
                      "an optional `X-Filename` header). `heatmap=true` also makes the heat map (its URL in the "
                      "answer). Errors: " + "; ".join(f"{k} {v}" for k, v in PREDICT_ERRORS.items()))
def predict_v1(request, heatmap: bool = False):
    diagnosis = predict(request, request.auth)
    return _timed(JsonResponse(v1_result(request, diagnosis)), diagnosis)


def v1_result(request, diagnosis: Diagnosis) -> dict:
    return {**diagnosis.to_api(request), "confirmation_url": request.build_absolute_uri(
        reverse("api_v1:confirmation", args=[diagnosis.pk]))}


def _own(request, pk: UUID) -> Diagnosis:
    diagnosis = Diagnosis.objects.select_related("confirmation").filter(pk=pk, owner=request.auth).first()
    if diagnosis is None:   # another doctor's result is as absent as a missing one: no probing
        raise Http404
    return diagnosis


def _count_read(request) -> None:
    try:
        ratelimit.check_requests(request, request.auth)
    except ratelimit.RateLimited as exc:
        raise ApiError(429, "rate_limited", exc.detail, {"Retry-After": str(exc.retry_after)}) from None


@api.get("/results", response={200: ResultPage, **_errors(*AUTH_ERRORS)}, url_name="results",
         summary="Your results, newest first")
def results(request, limit: Query[int] = 50, offset: Query[int] = 0):
    _count_read(request)
    limit, offset = max(1, min(limit, 200)), max(0, offset)
    mine = Diagnosis.objects.filter(owner=request.auth).select_related("confirmation").order_by("-created")
    return {"count": mine.count(), "results": [v1_result(request, d) for d in mine[offset:offset + limit]]}


@api.get("/results/{pk}", response={200: ResultOut, **_errors(*AUTH_ERRORS, 404)}, url_name="result",
         summary="One of your results")
def result(request, pk: UUID):
    _count_read(request)
    return v1_result(request, _own(request, pk))


@api.post("/results/{pk}/confirmation", response={200: ResultOut, **_errors(400, *AUTH_ERRORS, 404)},
          url_name="confirmation", summary="Confirm the diagnosis of one of your results")
def confirm(request, pk: UUID, body: ConfirmationIn):
    """`label`: NORMAL, PNEUMONIA or UNSURE, once known (report, follow-up); `note` optional.
    400 invalid_label; a second confirmation replaces the first."""
    diagnosis = _own(request, pk)
    try:
        ratelimit.check_confirmations(request, request.auth)
    except ratelimit.RateLimited as exc:
        raise ApiError(429, "rate_limited", exc.detail, {"Retry-After": str(exc.retry_after)}) from None
    try:
        local_cases.confirm(diagnosis, request.auth, body.label, body.note)
    except ValidationError as exc:
        raise ApiError(400, "invalid_label", " ".join(exc.messages)) from None
    diagnosis.refresh_from_db()
    return v1_result(request, diagnosis)


@api.get("/health", auth=None, response={200: Health, 503: Health}, url_name="health",
         summary="Whether the site can answer, and with which model version")
def health(request):
    holder().get(wait=False)   # never blocks: (re)loads in the background when due
    status = holder().status()
    champion = status["champion"]
    body = {"status": "ok" if status["champion_loaded"] else "degraded",
            "champion_loaded": status["champion_loaded"], "champion_version": champion["version"] if champion else None}
    return Status(200 if status["champion_loaded"] else 503, body)


def v1_urls():
    """api.urls with every view public to Django's LoginRequiredMiddleware: each route authenticates
    itself (401 JSON, never a redirect to the sign-in form); the schema and docs are public."""
    patterns, app, namespace = api.urls
    for pattern in patterns:
        pattern.callback.login_required = False
    return patterns, app, namespace


def legacy(view):
    """The first, unversioned route: the same answer as before plus Deprecation/Sunset headers and
    a link to its successor; after LEGACY_SUNSET, 410 Gone."""
    def wrapped(request, *args, **kwargs):
        if datetime.now(timezone.utc) > LEGACY_SUNSET:
            return ApiError(410, "gone", "this route was retired: use /api/v1/").response()
        response = view(request, *args, **kwargs)
        for key, value in LEGACY_HEADERS.items():
            response[key] = value
        response["Link"] = '</api/v1/>; rel="successor-version"'
        return response
    return login_not_required(csrf_exempt(never_cache(wrapped)))


@legacy
def legacy_predict(request):
    if request.method != "POST":
        return JsonResponse({"error": "method_not_allowed", "detail": "use POST"}, status=405, headers={"Allow": "POST"})
    try:
        diagnosis = predict(request, authenticate_api(request))
    except ApiError as exc:
        return exc.response()
    return _timed(JsonResponse(diagnosis.to_api(request)), diagnosis)
