"""Refuse oversized request bodies before anything parses them (issue 11 item 5, issue 25 item 5).

Django's CsrfViewMiddleware reads request.POST - the whole multipart body, spooled to /tmp - in
process_view when a csrftoken cookie is present, before the login check and before the upload view
can check sizes. So two checks run in the request phase, from the Content-Length header alone:

- RequestSizeLimitMiddleware, first of all: the limit of the route (`route_limit`), 413 with the
  reason. A body without a Content-Length (chunked) is refused with 411: browsers and HTTP clients
  send the length for uploads, and a length is what makes the early refusal possible.
- AnonymousBodyLimitMiddleware, right after AuthenticationMiddleware (still before any
  process_view, so before CSRF reads the body): a client that is not signed in may send at most
  XRAY_MAX_FORM_BODY_BYTES (the sign-in form), whatever the route. The token API is the exception:
  its view authenticates the token before it reads the body (and answers 401 without reading it).

The nginx proxy of the compose stack mirrors the same numbers per `location` (docs/configuration.md).
"""
from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse

API_PATHS = ("/api/predict", "/api/v1/predict")   # the upload route of each API generation
UPLOAD_PATH = "/upload/"


def route_limit(path: str) -> int:
    """The largest body `path` accepts: one image on the API, a batch on the upload page, and a
    small form (sign-in, admin, the token page, sign-out) everywhere else."""
    if path in API_PATHS:
        return settings.XRAY_MAX_API_BODY_BYTES
    if path == UPLOAD_PATH:
        return settings.XRAY_MAX_BODY_BYTES
    return settings.XRAY_MAX_FORM_BODY_BYTES


def _size(n: int) -> str:
    return f"{n // 1024} KB" if n < 1024 * 1024 else f"{n / 2**20:g} MB"


def _too_large(limit: int, detail: str) -> JsonResponse:
    return JsonResponse({"error": "too_large", "limit_bytes": limit, "detail": detail}, status=413)


def declared_length(request) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None


class RequestSizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            return JsonResponse({"error": "length_required",
                                 "detail": "send the body with a Content-Length"}, status=411)
        length = declared_length(request)
        if length is None:
            return JsonResponse({"error": "bad_request", "detail": "invalid Content-Length"}, status=400)
        limit = route_limit(request.path)
        if length > limit:
            return _too_large(limit, f"too large: request body over {_size(limit)} (the limit of {request.path})")
        return self.get_response(request)


class AnonymousBodyLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.XRAY_MAX_FORM_BODY_BYTES
        if (request.path not in API_PATHS and (declared_length(request) or 0) > limit
                and not request.user.is_authenticated):
            return _too_large(limit, f"too large: request body over {_size(limit)} without signing in: sign in first")
        return self.get_response(request)


class ContentSecurityPolicyMiddleware:
    """A strict Content-Security-Policy on every response that has none (issue 25 item 18): only
    this origin's scripts, styles and images (no inline script or style attribute; the templates
    keep theirs in static files), nothing framed, forms posted to this origin only. blob: lets the
    upload page preview the chosen files; data: the admin's inline SVG icons."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", settings.XRAY_CONTENT_SECURITY_POLICY)
        return response
