"""Upload rate limits (issue 25 item 2): at most XRAY_UPLOADS_PER_MINUTE images a minute per
user, and XRAY_TOKEN_UPLOADS_PER_MINUTE per API token (a script's token is limited on its own,
under its owner's limit). Each image is bounded in cost by pipeline.inference.upload; this bounds how many
one account can send. Confirmations (page and API) are counted against the same numbers, apart.

Fixed one-minute windows counted in Django's cache: shared by every worker when the cache is
Redis (XRAY_CACHE_URL, as in the compose stack), per process with the local-memory default.
"""
from __future__ import annotations

import hashlib
import time

from django.conf import settings
from django.core.cache import cache

WINDOW = 60


class RateLimited(Exception):
    def __init__(self, detail: str, retry_after: int):
        super().__init__(detail)
        self.detail, self.retry_after = detail, retry_after


def _count(key: str, n: int) -> int:
    bucket = f"xray-rate:{key}:{int(time.time() // WINDOW)}"
    cache.add(bucket, 0, WINDOW + 5)
    try:
        return cache.incr(bucket, n)
    except ValueError:  # expired between add and incr
        cache.set(bucket, n, WINDOW + 5)
        return n


def check_uploads(request, user, images: int = 1) -> None:
    """Count `images` against the user's (and the request's API token's) minute; RateLimited when over."""
    _check(request, user, images, "", "uploads", "images")


def check_confirmations(request, user) -> None:
    """Confirmations are cheap writes, but a runaway script must not flood the table: the same
    limits as uploads, counted in their own windows."""
    _check(request, user, 1, "confirm:", "confirmations", "confirmations")


def check_requests(request, user) -> None:
    """Reads of the API (results) in their own windows, at the same numbers: a polling script is
    limited per token like an uploading one."""
    _check(request, user, 1, "read:", "requests", "requests")


def _check(request, user, n: int, prefix: str, what: str, unit: str) -> None:
    retry = WINDOW - int(time.time() % WINDOW)
    if _count(f"{prefix}user:{user.pk}", n) > settings.XRAY_UPLOADS_PER_MINUTE:
        raise RateLimited(f"too many {what}: at most {settings.XRAY_UPLOADS_PER_MINUTE} {unit} a minute "
                          f"per user; try again in {retry} s", retry)
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        token = hashlib.sha256(header.partition(" ")[2].strip().encode()).hexdigest()[:32]
        if _count(f"{prefix}token:{token}", n) > settings.XRAY_TOKEN_UPLOADS_PER_MINUTE:
            raise RateLimited(f"too many {what}: at most {settings.XRAY_TOKEN_UPLOADS_PER_MINUTE} {unit} a "
                              f"minute per API token; try again in {retry} s", retry)
