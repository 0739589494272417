"""Confirmed diagnoses (issue "Learn the hospital it serves", the site part): a doctor confirms a
result on its page or through the API, staff rule on those that disagree with the model, and the
realised performance of the answers given, per model version and month."""
from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone as tz

import pytest
import requests

from livesite import DOCTOR, DOCTOR_PASSWORD, manage, predict, screenshot_dir
from webutil import make_user, staff_client, upload


def result(owner, label: str, probability: float, threshold: float = 0.5, version: str = "1",
           created: datetime | None = None):
    """A result row as the site records it (no image file: these tests do not read one)."""
    from diagnosis.models import Diagnosis

    d = Diagnosis.objects.create(owner=owner, label=label, probability=probability, threshold=threshold,
                                 model_name="web-test-xray", model_version=version, file_format="PNG",
                                 size_bytes=1, sha256=uuid.uuid4().hex, width=1, height=1,
                                 image=f"xrays/{owner.pk}/none.png", logit=0.0)
    if created is not None:  # `created` is auto_now_add: set it afterwards
        Diagnosis.objects.filter(pk=d.pk).update(created=created)
        d.refresh_from_db()
    return d


def other(label: str) -> str:
    return "NORMAL" if label == "PNEUMONIA" else "PNEUMONIA"


# --- the result page -------------------------------------------------------------------------------
def test_confirm_on_the_result_page(doctor_client, doctor, other_doctor):
    from django.test import Client

    from diagnosis.models import Confirmation

    d = result(doctor, "PNEUMONIA", 0.81)
    page = doctor_client.get(f"/results/{d.id}/").content.decode()
    assert "Not confirmed yet" in page and f'action="/results/{d.id}/confirm"' in page
    assert 'name="csrfmiddlewaretoken"' in page and "Record confirmation" in page

    r = doctor_client.post(f"/results/{d.id}/confirm", {"label": "NORMAL", "note": "CT: no consolidation"})
    assert r.status_code == 302 and r["Location"] == f"/results/{d.id}/"
    c = Confirmation.objects.get(diagnosis=d)
    assert (c.label, c.by, c.note) == ("NORMAL", doctor, "CT: no consolidation")
    page = doctor_client.get(r["Location"]).content.decode()
    assert "Confirmation recorded" in page and "confirmed by dr_house" in page and "CT: no consolidation" in page
    assert "staff will review it" in page and "Update confirmation" in page
    assert re.search(r'value="NORMAL" required checked', page)

    # a bad label: a clear message, nothing changed
    r = doctor_client.post(f"/results/{d.id}/confirm", {"label": "MAYBE"}, follow=True)
    assert "label must be one of" in r.content.decode()
    assert Confirmation.objects.get(diagnosis=d).label == "NORMAL"

    # another doctor: 404 as for any foreign result, nothing changed; GET is not a way in either
    cuddy = Client()
    cuddy.force_login(other_doctor)
    assert cuddy.post(f"/results/{d.id}/confirm", {"label": "PNEUMONIA"}).status_code == 404
    assert Confirmation.objects.get(diagnosis=d).label == "NORMAL"
    assert doctor_client.get(f"/results/{d.id}/confirm").status_code == 405

    # a form post needs the CSRF token
    csrf = Client(enforce_csrf_checks=True)
    csrf.force_login(doctor)
    assert csrf.post(f"/results/{d.id}/confirm", {"label": "PNEUMONIA"}).status_code == 403
    assert Confirmation.objects.get(diagnosis=d).label == "NORMAL"


def test_history_shows_the_confirmation_state(doctor_client, doctor):
    from diagnosis import local_cases

    agreed, differs, unsure, open_ = (result(doctor, "PNEUMONIA", 0.9), result(doctor, "NORMAL", 0.2),
                                      result(doctor, "NORMAL", 0.3), result(doctor, "NORMAL", 0.1))
    local_cases.confirm(agreed, doctor, "PNEUMONIA")
    local_cases.confirm(differs, doctor, "PNEUMONIA")
    local_cases.confirm(unsure, doctor, "UNSURE")
    html = doctor_client.get("/history/").content.decode()
    items = {m.group(1): m.group(2) for m in re.finditer(r'href="/results/([0-9a-f-]+)/"(.*?)</li>', html, re.S)}
    assert "Confirmed PNEUMONIA</span>" in items[str(agreed.id)]
    assert "Confirmed PNEUMONIA (differs)" in items[str(differs.id)] and "differs" in items[str(differs.id)]
    assert "Confirmation: unsure" in items[str(unsure.id)]
    assert "Not confirmed" in items[str(open_.id)]


# --- the API ---------------------------------------------------------------------------------------
def test_api_confirmation(client, doctor, other_doctor):
    from diagnosis.models import ApiToken, Confirmation

    d = result(doctor, "NORMAL", 0.12)
    _, key = ApiToken.issue(doctor)
    _, foreign = ApiToken.issue(other_doctor)
    url = f"/api/results/{d.id}/confirmation"
    assert d.to_api()["confirmation_url"] == url  # what /api/predict hands out

    def post(body, token=key, **extra):
        auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
        return client.post(url, json.dumps(body) if not isinstance(body, str) else body,
                           content_type="application/json", **auth, **extra)

    got = client.get(url, HTTP_AUTHORIZATION=f"Token {key}")
    assert got.status_code == 200 and got.json()["confirmation"] is None and got.json()["id"] == str(d.id)

    r = post({"label": "pneumonia", "note": "sputum culture positive"})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["id"] == str(d.id) and body["label"] == "NORMAL"  # the model's answer is unchanged
    assert body["confirmation"]["label"] == "PNEUMONIA" and body["confirmation"]["by"] == "dr_house"
    assert body["confirmation"]["note"] == "sputum culture positive" and body["confirmation"]["adjudicated"] is False
    assert Confirmation.objects.get(diagnosis=d).label == "PNEUMONIA"
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {key}").json()["confirmation"] == body["confirmation"]

    # another doctor's token: 404 for reading and for writing, nothing changed
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {foreign}").status_code == 404
    r = post({"label": "NORMAL"}, token=foreign)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert client.get(f"/api/results/{uuid.uuid4()}/confirmation", HTTP_AUTHORIZATION=f"Token {key}").status_code == 404

    # bad input: 400 with a code saying which
    r = post({"label": "MAYBE"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_label" and "PNEUMONIA" in r.json()["detail"]
    assert post({}).json()["error"] == "invalid_label"
    assert post("{not json").json()["error"] == "invalid_json"
    assert post(["PNEUMONIA"]).json()["error"] == "invalid_json"
    assert Confirmation.objects.get(diagnosis=d).label == "PNEUMONIA"

    # no or a bad token: 401, as /api/predict
    r = post({"label": "NORMAL"}, token=None)
    assert r.status_code == 401 and r.json()["error"] == "authentication_required"
    assert r["WWW-Authenticate"].startswith("Token")
    assert post({"label": "NORMAL"}, token="xr_not-a-token").status_code == 401
    assert client.put(url, HTTP_AUTHORIZATION=f"Token {key}").status_code == 405
    assert Confirmation.objects.get(diagnosis=d).label == "PNEUMONIA"


def test_api_confirmation_by_session_needs_csrf(doctor):
    from django.test import Client

    d = result(doctor, "NORMAL", 0.12)
    c = Client(enforce_csrf_checks=True)
    c.force_login(doctor)
    url = f"/api/results/{d.id}/confirmation"
    assert c.get(url).status_code == 200  # reading needs no token
    r = c.post(url, json.dumps({"label": "NORMAL"}), content_type="application/json")
    assert r.status_code == 403 and r.json()["error"] == "csrf_failed"


# --- staff: the adjudication queue -----------------------------------------------------------------
def test_staff_adjudication(doctor_client, doctor, other_doctor, champion, xray_jpeg):
    from django.test import Client

    from diagnosis import local_cases
    from diagnosis.models import Confirmation, Diagnosis

    assert upload(doctor_client, xray_jpeg).status_code == 302  # a real film: staff must see it
    d = Diagnosis.objects.get()
    agreeing = result(doctor, "NORMAL", 0.2)
    local_cases.confirm(agreeing, doctor, "NORMAL")
    unconfirmed = upload(doctor_client, xray_jpeg)["Location"].split("/")[2]
    assert doctor_client.post(f"/results/{d.id}/confirm", {"label": other(d.label)}).status_code == 302
    c = Confirmation.objects.get(diagnosis=d)

    staff = staff_client(make_user("qa_lead", staff=True))
    page = staff.get("/staff/confirmations/")
    html = page.content.decode()
    assert page.status_code == 200 and 'id="open-count">1<' in html
    assert f'action="/staff/confirmations/{c.pk}/adjudicate"' in html and f"{d.percent}%" in html
    assert f"/results/{d.id}/thumb" in html and str(agreeing.id) not in html
    assert 'href="/staff/confirmations/"' in html and 'href="/staff/performance/"' in html  # navigation

    # staff read the film of a result in the queue, not of any other result
    for kind in ("thumb", "display"):
        r = staff.get(f"/results/{d.id}/{kind}")
        assert r.status_code == 200 and r["Cache-Control"] == "private, max-age=3600"
    assert staff.get(f"/results/{unconfirmed}/thumb").status_code == 404
    assert staff.get(f"/results/{agreeing.id}/thumb").status_code == 404
    assert staff.get(f"/results/{d.id}/").status_code == 404  # the result page stays the doctor's
    cuddy = Client()
    cuddy.force_login(other_doctor)
    assert cuddy.get(f"/results/{d.id}/thumb").status_code == 404

    # doctors and staff without the second step are refused
    assert doctor_client.get("/staff/confirmations/").status_code == 302
    r = doctor_client.post(f"/staff/confirmations/{c.pk}/adjudicate", {"label": d.label})
    assert r.status_code == 302 and "/admin/login/" in r["Location"]
    no_mfa = Client()
    no_mfa.force_login(make_user("new_staff", staff=True))
    assert no_mfa.get("/staff/confirmations/")["Location"].startswith("/accounts/mfa/")
    assert no_mfa.get(f"/results/{d.id}/thumb")["Location"].startswith("/accounts/mfa/")
    assert staff.post(f"/staff/confirmations/{c.pk}/adjudicate", {"label": "PERHAPS"}).status_code == 302
    assert not Confirmation.objects.get(pk=c.pk).adjudicated_label
    assert staff.post(f"/staff/confirmations/{Confirmation.objects.get(diagnosis=agreeing).pk}/adjudicate",
                      {"label": "PNEUMONIA"}).status_code == 404  # not in the queue

    r = staff.post(f"/staff/confirmations/{c.pk}/adjudicate", {"label": d.label, "note": "reread: model right"},
                   follow=True)
    html = r.content.decode()
    assert "Ruled " + d.label in html and 'id="queue-empty"' in html and "reread: model right" in html
    c.refresh_from_db()
    assert (c.adjudicated_label, c.adjudicated_by.username, c.final_label) == (d.label, "qa_lead", d.label)
    assert not local_cases.disagreements().exists()
    truth = {case.id: case.label for case in local_cases.cases()}
    assert truth[str(d.id)] == int(d.label == "PNEUMONIA")  # the ruling, not the doctor's label
    page = doctor_client.get(f"/results/{d.id}/").content.decode()
    assert "Staff ruling by qa_lead" in page and "reread: model right" in page
    assert staff.get(f"/results/{d.id}/thumb").status_code == 200  # ruled: still in the list


# --- staff: realised performance -------------------------------------------------------------------
NOV, DEC = datetime(2026, 11, 14, 10, tzinfo=tz.utc), datetime(2026, 12, 2, 10, tzinfo=tz.utc)
# (model's probability, threshold it was answered with, doctor's label, staff ruling)
V3_NOVEMBER = [
    (0.90, 0.50, "PNEUMONIA", ""),       # TP
    (0.70, 0.50, "NORMAL", "PNEUMONIA"),  # TP: the ruling wins over the doctor's NORMAL
    (0.55, 0.50, "PNEUMONIA", ""),       # TP
    (0.60, 0.65, "PNEUMONIA", ""),       # FN at its own threshold (TP at 0.5)
    (0.10, 0.50, "NORMAL", ""),          # TN
    (0.58, 0.60, "NORMAL", ""),          # TN at its own threshold (FP at 0.5)
    (0.40, 0.35, "NORMAL", ""),          # FP
    (0.50, 0.50, "UNSURE", ""),          # left out
]
V4_DECEMBER = [(0.80, 0.50, "PNEUMONIA", ""), (0.30, 0.50, "PNEUMONIA", "")]  # no NORMAL


@pytest.fixture
def confirmed_cases(doctor):
    from diagnosis import local_cases

    ruler = make_user("ruler", staff=True)
    for version, created, rows in (("3", NOV, V3_NOVEMBER), ("4", DEC, V4_DECEMBER)):
        for prob, threshold, label, ruling in rows:
            d = result(doctor, "PNEUMONIA" if prob >= threshold else "NORMAL", prob, threshold, version, created)
            c = local_cases.confirm(d, doctor, label)
            if ruling:
                local_cases.adjudicate(c, ruler, ruling)
    result(doctor, "PNEUMONIA", 0.95, 0.5, "3", NOV)  # never confirmed: not counted
    return ruler


def by_hand_ci(k: int, n: int) -> tuple[float, float]:
    from scipy.stats import beta

    return (beta.ppf(0.025, k, n - k + 1) if k else 0.0, beta.ppf(0.975, k + 1, n - k) if k < n else 1.0)


def test_realised_performance_by_hand(confirmed_cases):
    from diagnosis import local_cases

    groups = {(g["month"], g["model_version"]): g for g in local_cases.realised()}
    assert [(g["month"], g["model_version"]) for g in local_cases.realised()] == [("2026-12", "4"), ("2026-11", "3")]
    nov = groups[("2026-11", "3")]
    assert (nov["n"], nov["positives"], nov["negatives"]) == (7, 4, 3)
    assert nov["sensitivity"] == pytest.approx(3 / 4) and nov["specificity"] == pytest.approx(2 / 3)
    assert nov["sensitivity_ci"] == pytest.approx(by_hand_ci(3, 4))
    assert nov["specificity_ci"] == pytest.approx(by_hand_ci(2, 3))
    # positives 0.90 0.70 0.60 0.55 against negatives 0.58 0.40 0.10: one pair of 12 is misordered
    assert nov["auc"] == pytest.approx(11 / 12)
    assert 0 <= nov["ece"] <= 1
    dec = groups[("2026-12", "4")]
    assert (dec["n"], dec["positives"], dec["negatives"], dec["sensitivity"]) == (2, 2, 0, 0.5)
    assert dec["specificity"] is None and dec["specificity_ci"] is None and dec["auc"] is None
    json.dumps(local_cases.realised())  # plain values, for the pipeline to log


def test_realised_performance_page(confirmed_cases, doctor_client):
    assert doctor_client.get("/staff/performance/").status_code == 302
    staff = staff_client(confirmed_cases)
    html = staff.get("/staff/performance/").content.decode()
    rows = {m.group(1): m.group(2) for m in re.finditer(r'<tr data-month="([\d-]+)"[^>]*>(.*?)</tr>', html, re.S)}
    nov, dec = rows["2026-11"], rows["2026-12"]
    lo, hi = by_hand_ci(3, 4)
    assert "<strong>0.750</strong>" in nov and f"{lo:.3f}–{hi:.3f}" in nov
    lo, hi = by_hand_ci(2, 3)
    assert "<strong>0.667</strong>" in nov and f"{lo:.3f}–{hi:.3f}" in nov and ">0.917<" in nov
    assert re.search(r'class="num">7</td><td class="num">4</td><td class="num">3</td>', nov)
    assert "v3" in nov and "v4" in dec and "<strong>0.500</strong>" in dec
    assert re.search(r'class="specificity"><span class="muted">too few cases', dec)


def test_performance_page_without_cases(db):
    html = staff_client(make_user("qa", staff=True)).get("/staff/performance/").content.decode()
    assert 'id="no-cases"' in html


# --- in a real browser, against gunicorn ----------------------------------------------------------
def test_confirmation_and_staff_pages_in_a_browser(live, browser, xray_jpeg, tmp_path):
    from playwright.sync_api import expect

    from diagnosis import mfa

    shots = screenshot_dir(tmp_path)
    film = tmp_path / "chest.jpeg"
    film.write_bytes(xray_jpeg)

    # the API end to end: an answer, then its confirmation with the same token
    answer = predict(live, xray_jpeg).json()
    auth = {"Authorization": f"Bearer {live.token}"}
    r = requests.post(answer["confirmation_url"], json={"label": answer["label"]}, headers=auth, timeout=30)
    assert r.status_code == 200 and r.json()["confirmation"]["label"] == answer["label"]
    assert requests.post(answer["confirmation_url"], json={"label": "x"}, timeout=30).status_code == 401

    doctor = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    doctor.goto(live.url + "/accounts/login/?next=/upload/")
    doctor.fill("#id_username", DOCTOR)
    doctor.fill("#id_password", DOCTOR_PASSWORD)
    doctor.click("button[type=submit]")
    doctor.set_input_files("#id_images", str(film))
    doctor.click("#analyse-btn")
    doctor.wait_for_url(re.compile(r"/results/[0-9a-f-]{36}/$"), timeout=60_000)
    verdict = doctor.locator("#verdict").inner_text()
    truth = other(verdict)
    expect(doctor.locator("#confirmation-state")).to_contain_text("Not confirmed yet")
    doctor.click(f"label.choice:has(input[value={truth}])")
    doctor.fill("input[name=note]", "report of 3 Dec")
    doctor.click("#confirm-btn")
    expect(doctor.locator(".alert-success")).to_contain_text("Confirmation recorded")
    expect(doctor.locator("#confirmation-state")).to_contain_text(truth)
    expect(doctor.locator("#confirmation-state")).to_contain_text(f"confirmed by {DOCTOR}")
    expect(doctor.locator(f"input[value={truth}]")).to_be_checked()
    doctor.screenshot(path=str(shots / "confirm-01-result.png"), full_page=True)
    doctor.goto(live.url + "/history/")
    expect(doctor.locator(".history-item").first).to_contain_text(f"Confirmed {truth} (differs)")
    doctor.screenshot(path=str(shots / "confirm-02-history.png"), full_page=True)

    out = manage(live.env, "create_doctor", "qa_staff", "--password", "staff-password-2031-q", "--staff")
    assert out.returncode == 0, out.stderr
    staff = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    staff.goto(live.url + "/accounts/login/?next=/staff/confirmations/")
    staff.fill("#id_username", "qa_staff")
    staff.fill("#id_password", "staff-password-2031-q")
    staff.click("button[type=submit]")
    staff.fill("#id_code", mfa.totp(staff.locator("#mfa-secret").inner_text().strip()))
    staff.click("#mfa-confirm")
    expect(staff).to_have_url(re.compile(r"/staff/confirmations/$"))
    expect(staff.locator("#queue tbody tr")).to_have_count(1)
    staff.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every(i => i.complete && i.naturalWidth > 0)")
    staff.screenshot(path=str(shots / "confirm-03-queue.png"), full_page=True)
    staff.select_option("#queue select[name=label]", truth)
    staff.fill("#queue input[name=note]", "agree with the report")
    staff.click("#queue button[type=submit]")
    expect(staff.locator("#queue-empty")).to_be_visible()
    expect(staff.locator("#ruled")).to_contain_text("agree with the report")
    staff.screenshot(path=str(shots / "confirm-04-ruled.png"), full_page=True)
    staff.click("nav >> text=Performance")
    row = staff.locator("#performance tbody tr")
    expect(row).to_have_count(1)  # this month, v1: the API's confirmation and the ruled one
    expect(row.locator("td").nth(2)).to_have_text("2")
    expect(row.locator("td").nth(3)).to_have_text("1")  # one confirmed as the model said, one ruled otherwise
    staff.screenshot(path=str(shots / "confirm-05-performance.png"), full_page=True)
