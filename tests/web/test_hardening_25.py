"""Issue 25, the Django side: per-file errors in a batch, token ids validated (14), a minimal public
/healthz (16), doctors' records protected from deletion (8), token expiry and revocation (15),
per-route body limits (5), the per-address login limit (6), CSP, staff MFA and passwords (18)."""
from __future__ import annotations

import pytest

from webutil import PASSWORD, make_user


# --- item 14: one failing file in a batch, malformed token ids -----------------------------------------
def test_an_unexpected_error_in_one_file_is_that_files_error(doctor_client, champion, xray_jpeg, monkeypatch):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from diagnosis import analysis
    from diagnosis.models import Diagnosis

    real = analysis.diagnose

    def flaky(owner, name, data, champion, **kw):
        if name == "second.jpeg":
            raise OSError("disk hiccup")  # not an UploadRejected: a bug or an I/O failure
        return real(owner, name, data, champion, **kw)

    monkeypatch.setattr(analysis, "diagnose", flaky)
    files = [SimpleUploadedFile(n, xray_jpeg) for n in ("first.jpeg", "second.jpeg", "third.jpeg")]
    doctor_client.raise_request_exception = False
    r = doctor_client.post("/upload/", {"images": files}, follow=True)
    assert r.status_code == 200, r.status_code
    html = r.content.decode()
    assert "2 images analysed" in html and "second.jpeg" in html and "could not be analysed" in html
    assert Diagnosis.objects.count() == 2
    # the same through the XHR/JSON answer: results for the good files, an error for the bad one
    files = [SimpleUploadedFile(n, xray_jpeg) for n in ("first.jpeg", "second.jpeg")]
    r = doctor_client.post("/upload/", {"images": files}, HTTP_X_REQUESTED_WITH="XMLHttpRequest")
    assert r.status_code == 200
    assert len(r.json()["results"]) == 1 and r.json()["errors"][0]["name"] == "second.jpeg"


@pytest.mark.parametrize("token_id", ["abc", "1.5", "", "9" * 30])
def test_a_malformed_token_id_is_a_400_not_a_500(doctor_client, doctor, token_id):
    from diagnosis.models import ApiToken

    ApiToken.issue(doctor)
    doctor_client.raise_request_exception = False
    r = doctor_client.post("/account/api-token/", {"action": "revoke", "token": token_id})
    assert r.status_code == 400
    assert ApiToken.objects.filter(user=doctor).count() == 1


# --- item 16: /healthz minimal in public, details for staff ----------------------------------------
def test_public_healthz_is_minimal_and_staff_see_the_details(client, champion, registry, doctor_client):
    from django.test import Client

    public = client.get("/healthz").json()
    assert public == {"status": "ok", "champion_loaded": True, "champion": {"version": registry["v1"]}}
    assert client.get("/healthz?detail=1").json() == public          # anonymous: no details
    assert doctor_client.get("/healthz?detail=1").json() == public   # a doctor neither
    staff = Client()
    staff.force_login(make_user("it_staff", staff=True))
    detail = staff.get("/healthz?detail=1").json()
    assert detail["status"] == "ok" and detail["champion"]["run_id"] and "threshold" in detail["champion"]
    assert detail["registry"]["reachable"] is True and "last_error" in detail["registry"]


def test_public_healthz_says_degraded_without_a_model(client, db):
    from diagnosis import champion as mod
    from webutil import make_holder

    previous = mod.reset_holder(make_holder("http://127.0.0.1:9", "never-registered-model"))
    try:
        body = client.get("/healthz").json()
        assert body == {"status": "degraded", "champion_loaded": False, "champion": None}
        assert client.get("/healthz?ready=1").status_code == 503
    finally:
        mod.reset_holder(previous)
