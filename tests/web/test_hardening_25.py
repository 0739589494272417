"""Issue 25, the Django side: per-file errors in a batch, token ids validated (14), a minimal public
/healthz (16), doctors' records protected from deletion (8), token expiry and revocation (15),
per-route body limits (5), the per-address login limit (6), CSP, staff MFA and passwords (18)."""
from __future__ import annotations

import re
from pathlib import Path

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
    from webutil import staff_client

    staff = staff_client(make_user("it_staff", staff=True))
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


# --- item 8: a doctor's records outlive the account; backups; retention ------------------------------
def _superuser_client():
    from django.contrib.auth import get_user_model
    from django.test import Client

    from webutil import staff_client

    return staff_client(get_user_model().objects.create_superuser("it_root", password=PASSWORD))


def test_deleting_a_doctor_with_results_is_refused(doctor_client, doctor, champion, xray_jpeg):
    from django.db.models import ProtectedError

    from diagnosis.models import Diagnosis, Refusal
    from webutil import upload

    assert upload(doctor_client, xray_jpeg).status_code == 302
    d = Diagnosis.objects.get(owner=doctor)
    with pytest.raises(ProtectedError):
        doctor.delete()
    assert Diagnosis.objects.filter(pk=d.pk).exists() and Path(d.image.path).is_file()
    refusing = make_user("dr_refused")
    Refusal.objects.create(owner=refusing, reason="a drawing", model_name="m", model_version="1")
    with pytest.raises(ProtectedError):
        refusing.delete()


def test_the_admin_deactivates_accounts_instead_of_deleting_them(doctor, db):
    from django.contrib.auth import get_user_model

    from diagnosis.models import ApiToken

    admin = _superuser_client()
    ApiToken.issue(doctor)
    page = admin.get("/admin/auth/user/")
    assert page.status_code == 200
    assert b"delete_selected" not in page.content and b"deactivate" in page.content
    assert admin.get(f"/admin/auth/user/{doctor.pk}/delete/").status_code == 403
    assert b"deletelink" not in admin.get(f"/admin/auth/user/{doctor.pk}/change/").content
    r = admin.post("/admin/auth/user/", {"action": "deactivate", "_selected_action": [doctor.pk]})
    assert r.status_code == 302
    doctor.refresh_from_db()
    assert doctor.is_active is False and get_user_model().objects.filter(pk=doctor.pk).exists()
    assert not ApiToken.objects.filter(user=doctor).exists()  # its tokens go with the access


def test_backup_command_copies_the_database_and_the_images(doctor_client, doctor, champion, xray_jpeg, tmp_path):
    import json
    import stat
    import tarfile

    from django.conf import settings
    from django.core.management import call_command

    from diagnosis.models import Diagnosis
    from webutil import upload

    assert upload(doctor_client, xray_jpeg).status_code == 302
    d = Diagnosis.objects.get(owner=doctor)
    call_command("backup_site", str(tmp_path / "backups"), verbosity=0)
    (folder,) = (tmp_path / "backups").iterdir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    rows = json.loads((folder / "database.json").read_text())
    assert any(r["model"] == "diagnosis.diagnosis" and r["pk"] == str(d.pk) for r in rows)
    with tarfile.open(folder / "media.tar.gz") as tar:
        names = tar.getnames()
        member = Path(d.image.path).relative_to(settings.MEDIA_ROOT)
        assert f"media/{member}" in names
        assert tar.extractfile(f"media/{member}").read() == Path(d.image.path).read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"] >= 1 and manifest["diagnoses"] >= 1


def test_backup_of_a_sqlite_site_has_a_copy_of_the_database(tmp_path):
    """The site as deployed (a SQLite file in WAL mode), through manage.py in its own process."""
    import sqlite3

    from livesite import manage, site_env

    env = site_env({"uri": "http://127.0.0.1:9", "name": "none"}, tmp_path / "data", 8999)
    for args in (("migrate", "--noinput"), ("create_doctor", "dr_backup", "--password", "backup-pass-phrase-xyz-1"),
                 ("backup_site", str(tmp_path / "backups"))):
        out = manage(env, *args)
        assert out.returncode == 0, out.stderr
    (folder,) = (tmp_path / "backups").iterdir()
    with sqlite3.connect(folder / "database.sqlite3") as db:
        assert db.execute("select username from auth_user").fetchall() == [("dr_backup",)]


def test_prune_refusals_keeps_the_recent_ones(doctor, db):
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    from diagnosis.models import Refusal

    old = Refusal.objects.create(owner=doctor, reason="old", model_name="m", model_version="1")
    new = Refusal.objects.create(owner=doctor, reason="new", model_name="m", model_version="1")
    Refusal.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(days=800))
    call_command("prune_refusals", "--days", "730", verbosity=0)
    assert list(Refusal.objects.values_list("pk", flat=True)) == [new.pk]


# --- item 15: API tokens expire, rotate, and die with a password change ------------------------------
def _predict(client, key, data):
    from webutil import api

    return api(client, data, HTTP_AUTHORIZATION=f"Token {key}")


def test_api_tokens_expire(client, doctor, champion, xray_jpeg, doctor_client):
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from diagnosis.models import ApiToken

    token, key = ApiToken.issue(doctor)
    days = settings.XRAY_API_TOKEN_DAYS
    assert days == 90 and abs(token.expires - (timezone.now() + timedelta(days=days))) < timedelta(minutes=1)
    assert _predict(client, key, xray_jpeg).status_code == 200
    page = doctor_client.get("/account/api-token/").content.decode()
    assert "Expires" in page and f"{token.expires:%-d %b %Y}" in page
    ApiToken.objects.filter(pk=token.pk).update(expires=timezone.now() - timedelta(seconds=1))
    r = _predict(client, key, xray_jpeg)
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_a_token_is_found_by_its_key_as_the_orm_finds_it(client, doctor, champion, xray_jpeg):
    """ApiToken.by_key (raw queries, every API request) gives the same token and user, typed, as the
    ORM's select_related; an unknown key finds nothing; a deactivated user's token is refused."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from diagnosis.models import ApiToken

    token, key = ApiToken.issue(doctor)
    with CaptureQueriesContext(connection) as queries:
        found = ApiToken.by_key(key)
    assert len(queries) == 2
    reference = ApiToken.objects.select_related("user").get(pk=token.pk)
    for obj, ref in ((found, reference), (found.user, reference.user)):
        for field in type(ref)._meta.concrete_fields:
            assert getattr(obj, field.attname) == getattr(ref, field.attname), field.name
            assert type(getattr(obj, field.attname)) is type(getattr(ref, field.attname)), field.name
    assert found.user.is_active is True and found.expires.tzinfo is not None and not found.expired
    assert ApiToken.by_key(key + "x") is None and ApiToken.by_key("") is None
    assert _predict(client, key, xray_jpeg).status_code == 200
    type(doctor).objects.filter(pk=doctor.pk).update(is_active=False)
    r = _predict(client, key, xray_jpeg)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_rotating_a_token_replaces_it(client, doctor, champion, xray_jpeg, doctor_client):
    import re

    from diagnosis.models import ApiToken

    old, old_key = ApiToken.issue(doctor, "PACS bridge")
    r = doctor_client.post("/account/api-token/", {"action": "rotate", "token": old.pk})
    assert r.status_code == 200
    new_key = re.search(r'id="new-token">([^<]+)<', r.content.decode()).group(1)
    (new,) = ApiToken.objects.filter(user=doctor)
    assert new.pk != old.pk and new.name == "PACS bridge" and new_key != old_key
    assert _predict(client, old_key, xray_jpeg).status_code == 401
    assert _predict(client, new_key, xray_jpeg).status_code == 200
    # someone else's token cannot be rotated (nothing happens to it)
    theirs, _ = ApiToken.issue(make_user("dr_other_rot"))
    assert doctor_client.post("/account/api-token/", {"action": "rotate", "token": theirs.pk}).status_code == 404
    assert ApiToken.objects.filter(pk=theirs.pk).exists()


def test_a_password_change_revokes_the_users_tokens(doctor, other_doctor, db):
    from django.core.management import call_command

    from diagnosis.models import ApiToken

    ApiToken.issue(doctor)
    ApiToken.issue(other_doctor)
    doctor.first_name = "Gregory"
    doctor.save()                                            # other changes keep the tokens
    assert ApiToken.objects.filter(user=doctor).count() == 1
    doctor.set_password("a-brand-new-passphrase-41")
    doctor.save()
    assert not ApiToken.objects.filter(user=doctor).exists()
    assert ApiToken.objects.filter(user=other_doctor).count() == 1
    # web_server.sh re-applies the same password at every start: that is no change
    call_command("create_doctor", other_doctor.username, "--update", "--password", PASSWORD,
                 "--skip-validation", verbosity=0)
    assert ApiToken.objects.filter(user=other_doctor).count() == 1


# --- item 5: body limits per route, anonymous bodies refused before parsing --------------------------
def _declared(client, path: str, length: int, **extra):
    """POST that *declares* `length` bytes and sends none: the test client's FakePayload raises if
    any layer tries to read the body, so a pass means nothing parsed it."""
    client.cookies["csrftoken"] = "x" * 32  # makes CsrfViewMiddleware read request.POST
    return client.generic("POST", path, b"", content_type="multipart/form-data; boundary=zzz",
                          CONTENT_LENGTH=str(length), **extra)


def test_limits_per_route_are_settings_with_the_documented_values():
    from django.conf import settings

    assert settings.XRAY_MAX_FORM_BODY_BYTES == 64 * 1024
    assert settings.XRAY_MAX_API_BODY_BYTES == settings.XRAY_MAX_UPLOAD_BYTES + 1024 * 1024
    assert settings.XRAY_MAX_BODY_BYTES == settings.XRAY_MAX_API_BODY_BYTES * settings.XRAY_MAX_FILES
    assert settings.XRAY_MAX_FORM_BODY_BYTES < settings.XRAY_MAX_API_BODY_BYTES < settings.XRAY_MAX_BODY_BYTES


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/", "/admin/auth/user/",
                                  "/account/api-token/", "/accounts/logout/"])
def test_small_form_routes_refuse_more_than_64_kb(path, doctor_client):
    from django.conf import settings
    from django.test import Client

    over = settings.XRAY_MAX_FORM_BODY_BYTES + 1
    for client in (Client(), doctor_client):
        r = _declared(client, path, over)
        assert r.status_code == 413 and "64 KB" in r.json()["detail"], (path, r.status_code)


def test_the_api_allows_one_file_and_the_upload_page_a_batch(doctor_client, doctor):
    from django.conf import settings

    from diagnosis.models import ApiToken

    _, key = ApiToken.issue(doctor)
    api_limit, page_limit = settings.XRAY_MAX_API_BODY_BYTES, settings.XRAY_MAX_BODY_BYTES
    r = _declared(doctor_client, "/api/predict", api_limit + 1, HTTP_AUTHORIZATION=f"Token {key}")
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert _declared(doctor_client, "/upload/", page_limit + 1).status_code == 413
    # real batches above the API's limit per file pass: test_pages.py::test_several_images_at_once


def test_anonymous_bodies_are_refused_before_they_are_parsed(db):
    from django.conf import settings
    from django.test import Client

    big = settings.XRAY_MAX_FORM_BODY_BYTES + 1
    r = _declared(Client(), "/upload/", big)   # would be read by CSRF before the login redirect
    assert r.status_code == 413 and "sign in" in r.json()["detail"]
    # the API authenticates before it reads: an anonymous client gets 401 without the body being read
    r = _declared(Client(), "/api/predict", big)
    assert r.status_code == 401


# --- item 6: a per-address limit besides the per-(username, address) lockout -------------------------
def _login(client, username, password):
    return client.post("/accounts/login/", {"username": username, "password": password})


def test_one_address_failing_across_many_usernames_is_locked_out(doctor, other_doctor):
    from django.conf import settings
    from django.test import Client

    stranger = Client(REMOTE_ADDR="203.0.113.7")
    per_user, per_ip = settings.AXES_FAILURE_LIMIT, settings.XRAY_LOGIN_IP_FAILURE_LIMIT
    assert per_user < per_ip
    # spraying: fewer failures per username than the per-user limit, many usernames
    tries = 0
    for i in range(per_ip):
        if _login(stranger, f"guess{i // (per_user - 1)}", "Winter2025!").status_code == 429:
            break
        tries += 1
    assert tries == per_ip, tries                              # locked at the per-address limit
    assert _login(stranger, other_doctor.username, PASSWORD).status_code == 429  # even a right password
    # other addresses are not affected: the doctor signs in from their own
    assert _login(Client(REMOTE_ADDR="198.51.100.20"), other_doctor.username, PASSWORD).status_code == 302


def test_a_stranger_cannot_keep_a_doctor_locked_out(doctor):
    from django.conf import settings
    from django.test import Client

    stranger, own = Client(REMOTE_ADDR="203.0.113.8"), Client(REMOTE_ADDR="198.51.100.21")
    for _ in range(settings.AXES_FAILURE_LIMIT * 3):         # keeps trying the doctor's name
        _login(stranger, doctor.username, "nope-nope-nope")
    assert _login(stranger, doctor.username, PASSWORD).status_code == 429
    assert _login(own, doctor.username, PASSWORD).status_code == 302  # the doctor is not locked out


def test_the_per_address_limit_uses_the_trusted_proxys_client_address(doctor):
    import ipaddress

    from django.conf import settings
    from django.test import Client, override_settings

    proxy = [ipaddress.ip_network("10.0.0.2/32")]
    with override_settings(XRAY_TRUSTED_PROXIES=proxy):
        behind = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.9")
        for i in range(settings.XRAY_LOGIN_IP_FAILURE_LIMIT):
            _login(behind, f"spray{i}", "x-wrong-password")
        assert _login(behind, doctor.username, PASSWORD).status_code == 429
        # another client behind the same proxy is another address: not locked
        other = Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="198.51.100.30")
        assert _login(other, doctor.username, PASSWORD).status_code == 302
        # an untrusted hop cannot pick its address by sending X-Forwarded-For
        direct = Client(REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="198.51.100.31")
        assert _login(direct, doctor.username, PASSWORD).status_code == 429


# --- item 17: `make run` serves with DEBUG off and keeps its logs private ------------------------------
def _stack_module(tmp_path, monkeypatch):
    import importlib.util

    from livesite import REPO

    monkeypatch.setenv("STACK_DIR", str(tmp_path / "local"))
    for name in ("DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "STACK_HOST"):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("stack_under_test", REPO / "scripts" / "stack.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_run_serves_with_debug_off_a_private_key_and_private_logs(tmp_path, monkeypatch):
    import stat

    stack = _stack_module(tmp_path, monkeypatch)
    web = stack.web_env()
    assert web["DJANGO_DEBUG"] == "0" and web["DJANGO_ALLOWED_HOSTS"] == "127.0.0.1,localhost"
    key_file = tmp_path / "local" / "secrets" / "django_secret_key"
    assert web["DJANGO_SECRET_KEY"] == key_file.read_text().strip() and len(web["DJANGO_SECRET_KEY"]) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stack.web_env()["DJANGO_SECRET_KEY"] == web["DJANGO_SECRET_KEY"]   # kept, not regenerated
    # a service's log, and one an older version left world-readable, end up 600
    stack.LOGS.mkdir(parents=True)
    old = stack.LOGS / "web.log"
    old.write_text("old lines\n")
    old.chmod(0o644)
    service = stack.Service("web", health_url="http://127.0.0.1:9/", pidfile=tmp_path / "web.pid")
    stack.PIDS.mkdir(parents=True)
    service.start(["true"])
    assert stat.S_IMODE(old.stat().st_mode) == 0o600 and "old lines" in old.read_text()
    stack.run_logged(["echo", "login: doctor / secret"], stack.LOGS / "step.log", "failed")
    assert stat.S_IMODE((stack.LOGS / "step.log").stat().st_mode) == 0o600
    assert stat.S_IMODE(stack.LOGS.stat().st_mode) == 0o700


def test_web_server_sh_defaults_to_debug_off_with_a_generated_key(registry, tmp_path):
    import stat

    import requests

    from livesite import Site, site_env
    from webutil import free_port

    port = free_port()
    env = site_env(registry, tmp_path / "data", port, XRAY_SECRETS_DIR=str(tmp_path / "secrets"),
                   WEB_WORKERS="1", XRAY_PRELOAD_CHAMPION="0")
    del env["DJANGO_DEBUG"], env["DJANGO_SECRET_KEY"]
    site = Site(env, port, tmp_path / "web.log").wait_ready(path="/healthz")
    try:
        missing = requests.get(site.url + "/no/such/page", timeout=10)
        assert missing.status_code == 404 and "Traceback" not in missing.text and "URLconf" not in missing.text
        login = requests.get(site.url + "/accounts/login/", timeout=10).text
        assert re.search(r'/static/diagnosis/app\.[0-9a-f]+\.css', login)   # collected, hashed: DEBUG off
        key = tmp_path / "secrets" / "django_secret_key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) >= 50
    finally:
        site.stop()


# --- item 18: staff MFA (TOTP), CSP, password rules -------------------------------------------------
def test_totp_matches_the_rfc_6238_test_vectors():
    import base64

    from diagnosis import mfa

    secret = base64.b32encode(b"12345678901234567890").decode()  # RFC 6238 appendix B, SHA-1
    for at, eight_digits in ((59, "94287082"), (1111111109, "07081804"), (1234567890, "89005924")):
        assert mfa.totp(secret, at) == eight_digits[-6:]
    assert mfa.matching_step(secret, "287082", at=59 + 30) == 1   # one step of clock drift is accepted
    assert mfa.matching_step(secret, "287082", at=59 + 90) is None


def test_staff_enrol_then_pass_the_second_step_and_doctors_are_not_asked(doctor, doctor_client):
    import time as _time

    from django.test import Client

    from diagnosis import mfa

    assert doctor_client.get("/history/").status_code == 200     # doctors: no second step
    make_user("it_mfa", staff=True)
    c = Client()
    assert c.post("/accounts/login/", {"username": "it_mfa", "password": PASSWORD}).status_code == 302
    for path in ("/admin/", "/staff/drift/", "/history/"):
        r = c.get(path)
        assert r.status_code == 302 and r["Location"].startswith("/accounts/mfa/"), (path, r["Location"])
    r = c.get("/accounts/mfa/?next=/admin/", follow=True)
    assert r.redirect_chain[-1][0].startswith("/accounts/mfa/setup/")
    secret = re.search(r'id="mfa-secret">([A-Z2-7]+)<', r.content.decode()).group(1)
    assert c.post("/accounts/mfa/setup/", {"code": "000000", "next": "/admin/"}).status_code == 400
    code = mfa.totp(secret)
    r = c.post("/accounts/mfa/setup/", {"code": code, "next": "/admin/"})
    assert r.status_code == 302 and r["Location"] == "/admin/"
    assert c.get("/admin/").status_code == 200
    # the next sign-in: the code again, and a code is accepted once
    c.post("/accounts/logout/")
    c.post("/accounts/login/", {"username": "it_mfa", "password": PASSWORD})
    assert c.get("/admin/")["Location"].startswith("/accounts/mfa/")
    assert c.get("/accounts/mfa/setup/")["Location"].startswith("/accounts/mfa/?")  # no second enrolment
    assert c.post("/accounts/mfa/", {"code": code}).status_code == 400                 # replayed
    step_code = mfa.totp(secret, _time.time() + 30)                                     # the next step's code
    r = c.post("/accounts/mfa/", {"code": step_code, "next": "/staff/drift/"})
    assert r.status_code == 302 and r["Location"] == "/staff/drift/"
    assert c.get("/admin/").status_code == 200


def test_pages_carry_a_strict_csp_and_no_inline_script_or_style(doctor_client, champion, xray_jpeg, client):
    from webutil import upload

    r = upload(doctor_client, xray_jpeg)
    pages = [client.get("/accounts/login/"), doctor_client.get("/upload/"), doctor_client.get(r["Location"]),
             doctor_client.get("/history/"), doctor_client.get("/account/api-token/")]
    for page in pages:
        csp = page["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        html = page.content.decode()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), html      # every script from a file
        assert " style=" not in html and "<style" not in html
    image = doctor_client.get(r["Location"] + "image")
    assert image["Content-Security-Policy"] == "default-src 'none'"         # the stricter one is kept


@pytest.mark.parametrize("password, reason", [("short-pass1", "at least 12"), ("password1234", "too common"),
                                              ("qwertyuiop123", "too common")])
def test_passwords_need_12_characters_and_must_not_be_common(password, reason, db):
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match=reason):
        validate_password(password)
    validate_password("correct-horse-battery-9")


def test_a_local_breached_list_is_checked_too(tmp_path, db):
    import gzip

    from django.contrib.auth.password_validation import CommonPasswordValidator
    from django.core.exceptions import ValidationError

    listing = tmp_path / "breached.txt.gz"
    listing.write_bytes(gzip.compress(b"hospital-winter-2025\n"))
    validator = CommonPasswordValidator(password_list_path=listing)
    with pytest.raises(ValidationError):
        validator.validate("Hospital-Winter-2025")
    validator.validate("correct-horse-battery-9")
