"""Issue 25 item 2: upload rate limits per user and per API token (HTTP 429 with Retry-After)."""
from __future__ import annotations

import pytest

from webutil import api, upload


@pytest.fixture(autouse=True)
def _fresh_counts():
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


def limits(user: int, token: int):
    from django.test import override_settings

    return override_settings(XRAY_UPLOADS_PER_MINUTE=user, XRAY_TOKEN_UPLOADS_PER_MINUTE=token)


def test_a_user_is_limited_per_minute_across_page_and_api(doctor_client, doctor, champion, xray_jpeg):
    from django.test import Client

    from diagnosis.models import ApiToken

    _, key = ApiToken.issue(doctor)
    with limits(3, 100):
        assert upload(doctor_client, xray_jpeg).status_code == 302
        assert api(Client(), xray_jpeg, HTTP_AUTHORIZATION=f"Token {key}").status_code == 200
        assert upload(doctor_client, xray_jpeg).status_code == 302
        r = api(Client(), xray_jpeg, HTTP_AUTHORIZATION=f"Token {key}")
        page = upload(doctor_client, xray_jpeg)
    assert r.status_code == 429 and r.json()["error"] == "rate_limited" and 0 < int(r["Retry-After"]) <= 60
    assert page.status_code == 429 and b"too many uploads" in page.content


def test_a_token_is_limited_on_its_own(client, doctor, champion, xray_jpeg):
    from diagnosis.models import ApiToken

    _, first = ApiToken.issue(doctor)
    _, second = ApiToken.issue(doctor, name="PACS")
    with limits(100, 2):
        for _ in range(2):
            assert api(client, xray_jpeg, HTTP_AUTHORIZATION=f"Token {first}").status_code == 200
        r = api(client, xray_jpeg, HTTP_AUTHORIZATION=f"Token {first}")
        assert r.status_code == 429 and "per API token" in r.json()["detail"]
        assert api(client, xray_jpeg, HTTP_AUTHORIZATION=f"Token {second}").status_code == 200


def test_a_batch_counts_each_image(doctor_client, champion, xray_jpeg):
    from django.core.files.uploadedfile import SimpleUploadedFile

    with limits(2, 100):
        r = doctor_client.post("/upload/", {"images": [SimpleUploadedFile(f"{i}.jpeg", xray_jpeg) for i in range(3)]})
    assert r.status_code == 429
    from diagnosis.models import Diagnosis

    assert Diagnosis.objects.count() == 0
