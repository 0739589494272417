"""API authentication: a session (the site's own pages, CSRF-checked) or an `Authorization:
Token <key>` / `Bearer <key>` header (scripts, PACS integrations; no CSRF, no cookies)."""
from __future__ import annotations

from django.http import JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone

from .models import ApiToken


class ApiError(Exception):
    """Any refusal of the JSON API: its status, a stable machine-readable `error` code and a
    sentence for people. Every API answers its errors through response() (one shape, documented
    in the OpenAPI schema as `Error`)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, dict(headers or {})

    def response(self):
        return JsonResponse({"error": self.code, "detail": self.detail}, status=self.status, headers=self.headers)


class AuthFailed(ApiError):
    def __init__(self, status: int, code: str, detail: str):
        # 401s say how to authenticate
        super().__init__(status, code, detail, {"WWW-Authenticate": 'Token realm="api"'} if status == 401 else None)


def token_from_header(request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        return None
    scheme, _, key = header.partition(" ")
    if scheme.lower() not in ("token", "bearer") or not key.strip():
        raise AuthFailed(401, "invalid_token", "Authorization header must be 'Token <key>' or 'Bearer <key>'")
    return key.strip()


def authenticate_api(request):
    """The user making this API request; AuthFailed (401/403) otherwise."""
    key = token_from_header(request)
    if key is not None:
        token = ApiToken.by_key(key)
        if token is None or not token.user.is_active:
            raise AuthFailed(401, "invalid_token", "unknown or revoked API token")
        if token.expired:
            raise AuthFailed(401, "invalid_token", "API token expired: create a new one on the API page")
        now = timezone.now()
        if token.last_used is None or (now - token.last_used).total_seconds() > 60:
            ApiToken.objects.filter(pk=token.pk).update(last_used=now)  # at most one write a minute
        return token.user
    if request.user.is_authenticated:
        _enforce_csrf(request)
        return request.user
    raise AuthFailed(401, "authentication_required",
                     "sign in, or send an 'Authorization: Token <key>' header")


def _enforce_csrf(request) -> None:
    """Session-authenticated API calls need the CSRF token like any form (as DRF does)."""
    check = CsrfViewMiddleware(lambda req: None)
    check.process_request(request)
    response = check.process_view(request, None, (), {})
    if response is not None:
        raise AuthFailed(403, "csrf_failed", "CSRF check failed: send the X-CSRFToken header")
