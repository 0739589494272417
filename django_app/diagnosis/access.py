"""Who may try to sign in how often, and who may reach /admin/ (issue 11 item 9).

- Login throttling is django-axes: failed sign-ins are counted per (username, client address);
  at XRAY_LOGIN_FAILURE_LIMIT the pair is locked out for XRAY_LOGIN_COOLOFF_MINUTES (HTTP 429).
  Per pair, not per address alone: a hospital's doctors often share one NAT address, and a
  lockout per address would let one mistyping colleague (or an attacker) lock them all out; and a
  stranger elsewhere cannot keep a named doctor locked out: only the stranger's pair is locked.
- A per-address limit on top (issue 25 item 6): XRAY_LOGIN_IP_FAILURE_LIMIT failures from one
  address across all usernames within the cool-off lock that address (password spraying). It is
  much higher than the per-pair limit, so a shared NAT address is not locked by a few mistypes.
- /admin/ can be switched off (XRAY_ADMIN_ENABLED=0) or limited to networks
  (XRAY_ADMIN_ALLOWED_NETWORKS="10.0.0.0/8,127.0.0.1"): other clients get a 404, before any
  session, CSRF or form handling.
- The client address is REMOTE_ADDR, or the right-most X-Forwarded-For entry when REMOTE_ADDR is
  one of XRAY_TRUSTED_PROXIES (the reverse proxy appends the address it saw; entries further
  left are whatever the client sent, so they are never believed).
"""
from __future__ import annotations

import ipaddress
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.http import Http404


def _in(address: str | None, networks) -> bool:
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_ip(request) -> str | None:
    remote = request.META.get("REMOTE_ADDR")
    if _in(remote, settings.XRAY_TRUSTED_PROXIES):
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        if forwarded and forwarded[-1]:
            return forwarded[-1]
    return remote


def address_locked_out(request) -> bool:
    """Failed sign-ins from the client's address, all usernames, within the cool-off (axes' rows)."""
    from axes.models import AccessAttempt
    from django.db.models import Sum
    from django.utils import timezone

    since = timezone.now() - timedelta(hours=settings.AXES_COOLOFF_TIME)
    failures = AccessAttempt.objects.filter(ip_address=client_ip(request), attempt_time__gte=since) \
        .aggregate(n=Sum("failures_since_start"))["n"] or 0
    return failures >= settings.XRAY_LOGIN_IP_FAILURE_LIMIT


class LoginThrottleBackend(ModelBackend):
    """Django's username/password check, preceded by axes' lockout check (as axes' AxesBackend).

    authenticate() without a request (management commands, a shell: people who already hold the
    database) has no client to throttle; axes' own backend raises there, this one just checks the
    password. One backend, not axes' + ModelBackend: force_login and sessions name the first
    backend, which must also be able to load the user."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is not None:
            from axes.backends import AxesStandaloneBackend
            from axes.exceptions import AxesBackendPermissionDenied

            if settings.AXES_ENABLED and address_locked_out(request):
                request.axes_locked_out = True  # AxesMiddleware answers 429, as for its own lockout
                raise AxesBackendPermissionDenied("too many failed sign-ins from this address")

            # raises AxesBackendPermissionDenied (-> 429 via AxesMiddleware) when locked out
            AxesStandaloneBackend().authenticate(request, username=username, password=password, **kwargs)
        return super().authenticate(request, username=username, password=password, **kwargs)


class AdminAccessMiddleware:
    """404 for /admin/ when it is disabled or the client is outside XRAY_ADMIN_ALLOWED_NETWORKS."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.prefix = "/admin/"

    def __call__(self, request):
        if request.path == self.prefix.rstrip("/") or request.path.startswith(self.prefix):
            allowed = settings.XRAY_ADMIN_ALLOWED_NETWORKS
            if not settings.XRAY_ADMIN_ENABLED or (allowed and not _in(client_ip(request), allowed)):
                raise Http404("not found")
        return self.get_response(request)
