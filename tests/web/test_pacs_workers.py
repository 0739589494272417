"""PACS workers as the processes `make run` and compose start (manage.py pacs_worker) against a
real Orthanc and the web suite's real champion: two workers share the feed without double work;
a worker killed mid-stream and the PACS restarted mid-stream lose nothing."""
from __future__ import annotations

import sqlite3
import time

import pytest
from livesite import DOCTOR, DOCTOR_PASSWORD, Site, manage, screenshot_dir, site_env
from pacsutil import Orthanc, film_dicom, installed, sr_count, start_worker, stop_worker, stow
from webutil import free_port


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def rows(db) -> list[tuple]:
    with sqlite3.connect(db, timeout=20) as con:
        return con.execute("SELECT sop_uid, state, diagnosis_id FROM diagnosis_pacsinstance").fetchall()


def diagnoses(db) -> int:
    with sqlite3.connect(db, timeout=20) as con:
        return con.execute("SELECT count(*) FROM diagnosis_diagnosis WHERE source='pacs'").fetchone()[0]


@pytest.fixture
def stack(registry, tmp_path, fullres_images):
    if not installed():
        pytest.skip("Debian's orthanc / orthanc-dicomweb are not installed (scripts/system_deps.sh)")
    orthanc = Orthanc(tmp_path / "orthanc").start()
    port = free_port()
    env = site_env(registry, tmp_path / "data", port, **orthanc.env(), XRAY_PACS_CLAIM_SECONDS="600",
                   XRAY_PACS_POLL_SECONDS="0.5", XRAY_FAST_PATH="0")
    out = manage(env, "migrate", "--noinput")
    assert out.returncode == 0, out.stderr
    workers = []
    yield orthanc, env, tmp_path / "data" / "db.sqlite3", workers, port
    for w in workers:
        stop_worker(w, kill=True)
    orthanc.stop()


def done(db, n):
    return lambda: sum(1 for _, state, _ in rows(db) if state in ("done", "refused")) >= n


def test_two_workers_no_double_work_and_restarts_lose_nothing(stack, fullres_images, tmp_path, browser):
    orthanc, env, db, workers, port = stack
    films = [film_dicom(p, patient_id=f"P{i}") for i, p in enumerate(fullres_images[:6])]
    stow(orthanc, films)
    workers += [start_worker(env, tmp_path / f"worker{i}.log") for i in range(2)]
    wait_for(done(db, 6), 150, "two workers to answer 6 studies")
    for ds in films:
        assert sr_count(orthanc, ds.StudyInstanceUID)[0] == 1, "one SR per study, not two"
    assert diagnoses(db) == sum(1 for _, state, _ in rows(db) if state == "done") >= 4  # the tiny gate may refuse one or two
    stop_worker(workers[1])

    # a worker killed mid-stream (SIGKILL: claims left behind), the PACS restarted mid-stream
    more = [film_dicom(p, patient_id=f"Q{i}") for i, p in enumerate(fullres_images[6:12])]
    stow(orthanc, more)
    wait_for(done(db, 7), 60, "the first of the new studies")
    stop_worker(workers[0], kill=True)
    orthanc.stop()
    workers.append(start_worker(env, tmp_path / "worker-restarted.log"))
    time.sleep(3)  # the new worker finds the PACS down and backs off
    orthanc.start()
    later = film_dicom(fullres_images[12], patient_id="R1")
    stow(orthanc, [later])
    wait_for(done(db, 13), 150, "every study answered after the restarts")
    for ds in films + more + [later]:
        assert sr_count(orthanc, ds.StudyInstanceUID)[0] == 1, ds.StudyInstanceUID
    sent = {ds.SOPInstanceUID for ds in films + more + [later]}
    answered = {sop: state for sop, state, _ in rows(db) if state in ("done", "refused")}
    assert set(answered) == sent, sorted(state for _, state, _ in rows(db))  # our own SR and captures: skipped
    states = list(answered.values())
    assert diagnoses(db) == states.count("done")

    # the worklist, as a doctor sees it in a browser (the site under gunicorn, same database)
    worklist_in_browser(env, port, browser, tmp_path, len(states), states.count("done"))


def worklist_in_browser(env, port, browser, tmp_path, n_rows: int, n_done: int) -> None:
    from playwright.sync_api import expect

    site = Site(env, port, tmp_path / "web.log").wait_ready("/healthz")
    try:
        page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
        page.goto(site.url + "/accounts/login/?next=/worklist/%3Fsort%3Dpriority")
        page.fill("#id_username", DOCTOR)
        page.fill("#id_password", DOCTOR_PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("#worklist tbody tr")).to_have_count(n_rows)
        pills = page.locator("#worklist .label-pill").all_inner_texts()
        assert len(pills) == n_done and pills == sorted(pills, key=lambda p: p != "PNEUMONIA")
        page.screenshot(path=str(screenshot_dir(tmp_path) / "pacs-01-worklist.png"), full_page=True)
        page.locator("#worklist a", has_text="Result").first.click()  # a PACS result: open to every doctor
        expect(page.locator("h1")).to_have_text("Result")
        expect(page.locator(".page-head .muted")).to_contain_text("PACS study")
        assert page.locator("#confirmation").count() == 0  # owner-only, and no doctor owns it
        page.wait_for_function("() => [...document.querySelectorAll('#viewer img')].every("
                               "i => i.complete && i.naturalWidth > 0)", timeout=30_000)  # film + heat map served
        page.screenshot(path=str(screenshot_dir(tmp_path) / "pacs-02-result.png"), full_page=True)
    finally:
        site.stop()
