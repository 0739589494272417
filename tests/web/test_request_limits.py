"""Oversized bodies are refused from the header, before CSRF, sessions or auth read them
(issue 11, item 5): RequestSizeLimitMiddleware is the first middleware.

The test client's body is a FakePayload that raises if anything reads past what was really sent,
so a request that *declares* a huge Content-Length but sends nothing fails loudly if any layer
tries to parse it - which is what CsrfViewMiddleware does when a csrftoken cookie is present.
"""
from __future__ import annotations

from django.conf import settings
from django.test import Client


def _huge(client: Client, path: str, **extra):
    client.cookies["csrftoken"] = "x" * 32  # makes CsrfViewMiddleware read request.POST
    declared = settings.XRAY_MAX_BODY_BYTES + 1
    return client.generic("POST", path, b"", content_type="multipart/form-data; boundary=zzz",
                          CONTENT_LENGTH=str(declared), **extra)


def test_middleware_is_first():
    assert settings.MIDDLEWARE[0] == "xray_site.middleware.RequestSizeLimitMiddleware"


def test_over_limit_content_length_is_413_before_csrf_and_login(db):
    for path in ("/", "/accounts/login/", "/api/predict", "/admin/login/"):
        response = _huge(Client(), path)
        assert response.status_code == 413, (path, response.status_code)
        assert response.json()["error"] == "too_large"


def test_chunked_body_without_length_is_411(db):
    response = Client().generic("POST", "/", b"", HTTP_TRANSFER_ENCODING="chunked")
    assert response.status_code == 411


def test_body_at_the_limit_passes_through(db):
    # a declared length at the limit reaches the normal stack (CSRF refuses the empty form: 403)
    client = Client(enforce_csrf_checks=True)
    response = client.generic("POST", "/accounts/login/", b"", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 403
