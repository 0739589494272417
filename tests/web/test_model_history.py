"""Issue 27 item 4: the staff page of the model moves (/staff/models/), read from the real audit
trail of the web suite's registry, and each result's link to the decision behind its version."""
from __future__ import annotations

import datetime as dt
import re

from webutil import ensure_champion, free_port, make_holder, make_user, staff_client, upload


def row(html: str, run_id: str) -> str:
    match = re.search(rf'<tr id="e-{run_id}".*?</tr>', html, re.S)
    assert match, f"no row for entry {run_id}"
    return match.group(0)


def test_staff_see_every_move_and_each_result_links_to_its_decision(client, doctor_client, champion, registry,
                                                                    xray_jpeg):
    from pipeline.mlops import aliases, audit, server

    name, v1, v2 = registry["name"], int(registry["v1"]), int(registry["v2"])
    mlflow = server.client_of(registry["uri"])
    approval = {"by": "dr.alice", "at": "2026-03-02T09:00:00+00:00", "comment": "agrees with v1 on 412 shadow cases",
                "via": "airflow-hitl"}
    try:
        aliases.promote(v2, {"reason": "beats v1 (web test)", "champion_version": v1, "approval": approval,
                             "actor": "airflow:xray_retrain/web-run", "dag_run_id": "web-run"}, name=name)
        aliases.rollback(name=name, reason="back to v1 (web test)", actor="qa_lead")
    finally:
        ensure_champion(registry["uri"], name, registry["v1"])
    *_, promoted, rolled_back = audit.timeline(mlflow, name)
    assert (promoted["kind"], rolled_back["kind"]) == ("promotion", "rollback")

    staff = staff_client(make_user("audit_lead", staff=True))
    page = staff.get("/staff/models/")
    html = page.content.decode()
    assert page.status_code == 200 and 'id="model-timeline"' in html and 'aria-current="page">Models<' in html
    p = row(html, promoted["id"])
    assert f'id="v{v2}"' in p and "dr.alice" in p and "agrees with v1 on 412 shadow cases" in p
    assert "airflow:xray_retrain/web-run" in p and "web-run" in p and "beats v1 (web test)" in p
    assert f'href="/models/{v2}/card"' in p and f'href="/models/{v1}/card"' in p
    r = row(html, rolled_back["id"])
    assert "qa_lead" in r and "back to v1 (web test)" in r and f'id="v{v1}"' not in r   # a rollback is no sign-off
    assert html.index(f'id="e-{rolled_back["id"]}"') < html.index(f'id="e-{promoted["id"]}"')   # newest first
    # v1's anchor sits on the last decision that put v1 in service
    v1_decision = [e for e in audit.timeline(mlflow, name) if e["kind"] in audit.SIGN_OFFS and e["to_version"] == v1][-1]
    assert f'<a id="v{v1}"></a>' in row(html, v1_decision["id"]) and html.count(f'id="v{v1}"') == 1

    # which version answered at an instant between the promotion and the rollback, and who approved it
    t = audit.parse_time(promoted["at"]) + (audit.parse_time(rolled_back["at"]) - audit.parse_time(promoted["at"])) / 2
    asked = staff.get("/staff/models/", {"at": t.isoformat()}).content.decode()
    assert f"<strong>v{v2}</strong> was the champion" in asked and "Approved by <strong>dr.alice</strong>" in asked
    assert "not a date" in staff.get("/staff/models/", {"at": "yesterday"}).content.decode()
    early = staff.get("/staff/models/", {"at": (dt.datetime(2001, 1, 1)).isoformat()}).content.decode()
    assert "no champion move" in early

    # each result links (for staff) to its version's card and to the decision that put it in service
    result = staff.get(upload(staff, xray_jpeg)["Location"]).content.decode()
    assert f'href="/staff/models/#v{v1}"' in result and f'href="/models/{v1}/card"' in result
    doctor_result = doctor_client.get(upload(doctor_client, xray_jpeg)["Location"]).content.decode()
    assert "model-history-link" not in doctor_result and "/staff/models/" not in doctor_result


def test_the_page_is_for_staff_only(client, doctor_client, champion):
    assert doctor_client.get("/staff/models/").status_code == 302          # doctors: to the admin login
    assert "/staff/models/" not in doctor_client.get("/upload/").content.decode()   # nor in their menu
    assert client.get("/staff/models/").status_code == 302                 # anonymous: to the sign-in


def test_a_registry_that_does_not_answer_is_said_so(champion, registry):
    from diagnosis import champion as mod

    previous = mod.reset_holder(make_holder(f"http://127.0.0.1:{free_port()}", registry["name"]))
    try:
        page = staff_client(make_user("audit_lead2", staff=True)).get("/staff/models/")
    finally:
        mod.reset_holder(previous)
    assert page.status_code == 503 and "cannot be reached" in page.content.decode()


def test_browser_from_a_result_to_the_decision_behind_its_version(live, browser, registry, fullres_images, tmp_path):
    """A staff member in chromium: an answer, its link to the timeline, the decision's row in view."""
    from playwright.sync_api import expect

    from diagnosis import mfa
    from livesite import manage, screenshot_dir

    shots = screenshot_dir(tmp_path)
    assert manage(live.env, "create_doctor", "audit_staff", "--password", "staff-password-2031-y",
                  "--staff").returncode == 0
    page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    page.goto(live.url + "/accounts/login/?next=/upload/")
    page.fill("#id_username", "audit_staff")
    page.fill("#id_password", "staff-password-2031-y")
    page.click("button[type=submit]")
    page.fill("#id_code", mfa.totp(page.locator("#mfa-secret").inner_text().strip()))
    page.click("#mfa-confirm")
    page.set_input_files("#id_images", str(fullres_images[0]))
    page.click("#analyse-btn")
    page.wait_for_url(re.compile(r"/results/[0-9a-f-]{36}/$"), timeout=60_000)
    page.click("#model-history-link")
    expect(page).to_have_url(re.compile(rf"/staff/models/#v{registry['v1']}$"))
    decision = page.locator(f"tr:has(#v{registry['v1']})")
    expect(decision).to_be_in_viewport()
    expect(decision).to_have_attribute("data-version", str(registry["v1"]))
    page.screenshot(path=str(shots / "audit-01-model-history.png"), full_page=True)
    page.fill("input[name=at]", "2001-01-01")
    page.click("#served-at-form button")
    expect(page.locator("#served-at-error")).to_contain_text("no champion move")
