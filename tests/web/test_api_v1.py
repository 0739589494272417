"""/api/v1/: the versioned API, its OpenAPI 3 schema (validated) and docs page, per-token throttling,
and the unversioned aliases with their Deprecation/Sunset headers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from django.test import override_settings

from tests.web.livesite import CHROMIUM, CHROMIUM_ARGS, screenshot_dir
from tests.web.webutil import api

pytestmark = pytest.mark.django_db


def _token(user) -> str:
    from diagnosis.models import ApiToken

    return ApiToken.issue(user)[1]


def test_live_schema_is_valid_openapi_3_and_documents_every_error(live):
    from openapi_spec_validator import validate

    r = requests.get(live.url + "/api/v1/schema", timeout=10)   # public: no token, no sign-in
    assert r.status_code == 200, r.text
    schema = r.json()
    validate(schema)   # raises on any violation of the OpenAPI 3.x specification
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    assert {"/api/v1/predict", "/api/v1/results", "/api/v1/results/{pk}", "/api/v1/results/{pk}/confirmation",
            "/api/v1/health"} <= set(paths)
    predict = paths["/api/v1/predict"]["post"]
    assert {"200", "400", "401", "413", "422", "429", "503"} <= set(predict["responses"])
    assert {"multipart/form-data", "application/octet-stream"} <= set(predict["requestBody"]["content"])
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "detail"}
    for path, operations in paths.items():   # every error an operation can answer is the Error shape
        for op in operations.values():
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")) and path != "/api/v1/health":
                    assert response["content"]["application/json"]["schema"]["$ref"].endswith("/Error"), (path, code)


def test_live_predict_and_docs_page(live, xray_jpeg, tmp_path):
    headers = {"Authorization": f"Token {live.token}"}
    r = requests.post(live.url + "/api/v1/predict?heatmap=true", headers=headers,
                      files={"image": ("chest.jpeg", xray_jpeg)}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] in ("NORMAL", "PNEUMONIA") and 0 <= body["probability"] <= 1
    assert body["confirmation_url"].endswith(f"/api/v1/results/{body['id']}/confirmation")
    raw = requests.post(live.url + "/api/v1/predict", data=xray_jpeg, timeout=60,
                        headers={**headers, "Content-Type": "application/octet-stream", "X-Filename": "c.jpeg"})
    assert raw.status_code == 200 and raw.json()["probability"] == pytest.approx(body["probability"])
    assert requests.post(live.url + "/api/v1/predict", files={"image": ("c.jpeg", xray_jpeg)},
                         timeout=30).json()["error"] == "authentication_required"
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    # the docs page renders from the site's own static files (no CDN: hospitals have no internet).
    # Its own browser, closed here: Playwright's loop must not outlive the test (the ORM refuses to
    # run beside a running event loop, and the tests after this one use the database).
    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("request", lambda req: outside.append(req.url) if not req.url.startswith(live.url) else None)
        page.goto(live.url + "/api/v1/docs")
        page.locator(".opblock-summary-path", has_text="/api/v1/predict").first.wait_for(timeout=20000)
        page.screenshot(path=str(screenshot_dir(tmp_path) / "api-docs.png"), full_page=True)
        browser.close()
    assert outside == []


def test_results_confirmation_and_ownership(client, doctor, other_doctor, champion, xray_jpeg):
    key = _token(doctor)
    auth = {"HTTP_AUTHORIZATION": f"Token {key}"}
    made = client.post("/api/v1/predict", {"image": _file(xray_jpeg)}, **auth)
    assert made.status_code == 200, made.content
    pk = made.json()["id"]
    listed = client.get("/api/v1/results", **auth).json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == pk
    assert client.get(f"/api/v1/results/{pk}", **auth).json()["confirmation"] is None
    bad = client.post(f"/api/v1/results/{pk}/confirmation", json.dumps({"label": "MAYBE"}),
                      content_type="application/json", **auth)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_label"
    ok = client.post(f"/api/v1/results/{pk}/confirmation", json.dumps({"label": "PNEUMONIA", "note": "CT"}),
                     content_type="application/json", **auth)
    assert ok.status_code == 200 and ok.json()["confirmation"]["label"] == "PNEUMONIA"
    # another doctor's result does not exist for them (no probing)
    other = {"HTTP_AUTHORIZATION": f"Token {_token(other_doctor)}"}
    assert client.get(f"/api/v1/results/{pk}", **other).status_code == 404
    assert client.get("/api/v1/results", **other).json()["count"] == 0
    missing = client.post(f"/api/v1/results/{pk}/confirmation", json.dumps({"label": "NORMAL"}),
                          content_type="application/json", **other)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    malformed = client.post(f"/api/v1/results/{pk}/confirmation", "{not json", content_type="application/json", **auth)
    assert malformed.status_code == 400 and malformed.json()["error"] == "invalid_request"


def test_a_new_answer_does_not_ask_the_database_for_its_confirmation(client, doctor, champion, xray_jpeg):
    """A result just made has no confirmation: its answer says so without a query (one less per
    upload); the result read back later still asks, and shows the confirmation once there is one."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    auth = {"HTTP_AUTHORIZATION": f"Token {_token(doctor)}"}
    with CaptureQueriesContext(connection) as queries:
        made = client.post("/api/v1/predict", {"image": _file(xray_jpeg)}, **auth)
    assert made.status_code == 200 and made.json()["confirmation"] is None
    asked = [q["sql"] for q in queries.captured_queries if "diagnosis_confirmation" in q["sql"]]
    assert not asked, asked
    pk = made.json()["id"]
    client.post(f"/api/v1/results/{pk}/confirmation", json.dumps({"label": "NORMAL"}),
                content_type="application/json", **auth)
    assert client.get(f"/api/v1/results/{pk}", **auth).json()["confirmation"]["label"] == "NORMAL"


def test_errors_have_the_documented_shape(client, doctor, champion):
    auth = {"HTTP_AUTHORIZATION": f"Token {_token(doctor)}"}
    text = client.post("/api/v1/predict", {"image": _file(b"hello, not an image")}, **auth)
    assert text.status_code == 400 and set(text.json()) == {"error", "detail"}
    assert text.json()["error"] == "invalid_image"
    wrong = client.get("/api/v1/results", HTTP_AUTHORIZATION="Token nope")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_token"
    assert wrong["WWW-Authenticate"]


@override_settings(XRAY_UPLOADS_PER_MINUTE=1000, XRAY_TOKEN_UPLOADS_PER_MINUTE=3)
def test_throttled_per_token(client, doctor, champion):
    from django.core.cache import cache

    cache.clear()
    first, second = _token(doctor), _token(doctor)
    codes = [client.get("/api/v1/results", HTTP_AUTHORIZATION=f"Token {first}").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = client.get("/api/v1/results", HTTP_AUTHORIZATION=f"Token {first}")
    assert limited.json()["error"] == "rate_limited" and int(limited["Retry-After"]) > 0
    # the same doctor's other token has its own minute
    assert client.get("/api/v1/results", HTTP_AUTHORIZATION=f"Token {second}").status_code == 200
    cache.clear()


def test_health_is_public(client, champion, registry):
    r = client.get("/api/v1/health")
    assert r.status_code == 200 and r.json()["champion_loaded"] is True
    assert r.json()["champion_version"] == str(registry["v1"])


def test_legacy_route_is_an_announced_alias(client, doctor, champion, xray_jpeg):
    r = api(client, xray_jpeg, HTTP_AUTHORIZATION=f"Token {_token(doctor)}")
    assert r.status_code == 200, r.content
    assert r["Deprecation"] == "true" and "2027" in r["Sunset"]
    assert 'rel="successor-version"' in r["Link"]
    assert r.json()["confirmation_url"].endswith(f"/api/results/{r.json()['id']}/confirmation")


def _file(data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("chest.jpeg", data, content_type="image/jpeg")
