"""A second sign-in step for staff (issue 25 item 18): TOTP, RFC 6238 (SHA-1, 6 digits, 30 s),
which every authenticator app speaks. About 20 lines of standard library instead of a package.

Staff accounts reach the admin, model cards and the drift page (and every other page) only after
enrolling an authenticator (/accounts/mfa/setup/) and typing its code once per sign-in
(/accounts/mfa/). Doctors are not asked. A code is accepted once (replays are refused) and one step
either side of now (clock drift). The proof lives in the session, which sign-out or expiry ends.
"""
from __future__ import annotations

import base64
import hmac
import secrets
import struct
import time
from urllib.parse import quote, urlencode

from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

SESSION_KEY = "mfa_verified_user"
STEP = 30
DIGITS = 6


def new_secret() -> str:
    return base64.b32encode(secrets.token_bytes(20)).decode()


def totp(secret: str, at: float | None = None, step_offset: int = 0) -> str:
    counter = int((time.time() if at is None else at) // STEP) + step_offset
    digest = hmac.new(base64.b32decode(secret), struct.pack(">Q", counter), "sha1").digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 10 ** DIGITS
    return f"{code:0{DIGITS}d}"


def matching_step(secret: str, code: str, at: float | None = None) -> int | None:
    """The time step whose code is `code` (now, or one step either side), else None."""
    now = time.time() if at is None else at
    code = (code or "").strip().replace(" ", "")
    for offset in (0, -1, 1):
        if hmac.compare_digest(totp(secret, now, offset), code):
            return int(now // STEP) + offset
    return None


def provisioning_uri(secret: str, username: str, issuer: str = "Chest X-ray assistant") -> str:
    return (f"otpauth://totp/{quote(issuer)}:{quote(username)}?"
            + urlencode({"secret": secret, "issuer": issuer, "digits": DIGITS, "period": STEP}))


def verified(request) -> bool:
    return request.session.get(SESSION_KEY) == request.user.pk


def mark_verified(request) -> None:
    request.session[SESSION_KEY] = request.user.pk


class StaffMfaMiddleware:
    """A signed-in staff account without the second step is sent to it, whatever the page."""

    OPEN = ("/accounts/mfa/", "/accounts/logout/", "/static/", "/healthz")

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = request.user
        if user.is_authenticated and user.is_staff and not verified(request) \
                and not request.path.startswith(self.OPEN):
            if request.path.startswith("/api/") or request.headers.get("x-requested-with") == "XMLHttpRequest":
                from django.http import JsonResponse

                return JsonResponse({"error": "mfa_required", "detail": "staff accounts need the second "
                                     "sign-in step: open /accounts/mfa/ in the browser"}, status=403)
            target = reverse("mfa_verify")
            nxt = request.get_full_path()
            if url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}):
                target += "?" + urlencode({"next": nxt})
            return redirect(target)
        return self.get_response(request)
