"""The site as it runs for real: scripts/web_server.sh -> gunicorn workers -> the champion of a
real MLflow server; production settings on PostgreSQL; a real browser (Debian's chromium)."""
from __future__ import annotations

import base64
import re
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from livesite import (DOCTOR, DOCTOR_PASSWORD, REPO, Site, manage, predict, screenshot_dir, site_env, site_python,
                      wait_serving)
from webutil import free_port, set_champion


def test_gunicorn_serves_the_registry_champion(live, registry, fullres_images, xray_jpeg):
    health = requests.get(live.url + "/healthz", timeout=10).json()
    assert health == {"status": "ok", "champion_loaded": True, "champion": {"version": registry["v1"]}}
    answers = [predict(live, p.read_bytes(), p.name) for p in fullres_images[:6]]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert {r.json()["model_version"] for r in answers} == {registry["v1"]}
    assert {r.json()["model_name"] for r in answers} == {registry["name"]}
    # the site runs on the web image's packages, where torch cannot be imported (livesite.site_python):
    # the answers above, and a heat map, came from the version's ONNX file in OpenVINO
    blocked = subprocess.run([live.env["PYTHON"], "-c", "import torch"], env=live.env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "torch" in blocked.stderr
    cam = requests.post(live.url + "/api/v1/predict?heatmap=true", files={"image": ("x.jpeg", xray_jpeg)},
                        headers={"Authorization": f"Token {live.token}"}, timeout=60)
    assert cam.status_code == 200 and cam.json()["heatmap_url"] and cam.json()["heatmap_empty"] is not None, cam.text
    r = predict(live, xray_jpeg[: len(xray_jpeg) // 2])
    assert r.status_code == 400 and "truncated" in r.json()["detail"]
    assert requests.post(live.url + "/api/predict", files={"image": ("x.jpeg", xray_jpeg)}, timeout=30).status_code == 401

    # DEBUG off: hashed static files from whitenoise, no debug pages, security headers
    login = requests.get(live.url + "/accounts/login/", timeout=10)
    css = re.search(r'href="(/static/diagnosis/app\.[0-9a-f]+\.css)"', login.text).group(1)
    static = requests.get(live.url + css, timeout=10)
    assert static.status_code == 200 and "max-age=315360000" in static.headers["Cache-Control"]
    assert login.headers["X-Frame-Options"] == "DENY" and login.headers["X-Content-Type-Options"] == "nosniff"
    missing = requests.get(live.url + "/no/such/page", timeout=10)
    assert missing.status_code == 404 and "Traceback" not in missing.text and "DEBUG" not in missing.text


def test_alias_move_under_load_fails_no_request(live, registry, xray_jpeg):
    """Promote v2 while 4 clients keep asking: every request succeeds, the workers move to v2
    without a restart, each answer is consistent with the version that gave it."""
    seen, errors, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            r = predict(live, xray_jpeg)
            if r.status_code != 200:
                errors.append((r.status_code, r.text[:200]))
            else:
                seen.append((time.time(), r.json()))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        time.sleep(1.0)
        set_champion(registry["uri"], registry["name"], registry["v2"])
        moved = time.time()
        deadline = moved + 60
        while time.time() < deadline:  # both workers (each checks every second) answer with v2
            recent = [a for t, a in seen if t > moved + 0.5]
            if sum(a["model_version"] == registry["v2"] for a in recent[-8:]) == 8:
                break
            time.sleep(0.3)
        stop.set()
        for f in futures:
            f.result()
    assert not errors
    versions = [a["model_version"] for _, a in seen]
    assert versions[0] == registry["v1"] and versions[-1] == registry["v2"]
    for _, a in seen:  # v2 is the threshold-0 variant: its answers prove which model replied
        if a["model_version"] == registry["v2"]:
            assert a["threshold"] == 0.0 and a["label"] == "PNEUMONIA"
        else:
            assert a["threshold"] > 0
    set_champion(registry["uri"], registry["name"], registry["v1"])
    wait_serving(live, registry["v1"], xray_jpeg)   # and back, for the tests after this one



def test_doctor_in_a_real_browser(live, browser, registry, shared_datasets, tmp_path, xray_jpeg):
    from playwright.sync_api import expect

    wait_serving(live, registry["v1"], xray_jpeg)   # whatever moved the alias before this test
    shots = screenshot_dir(tmp_path)
    pneumonia = sorted((shared_datasets / "fullres_samples" / "PNEUMONIA").glob("*.jpeg"))
    normal = sorted((shared_datasets / "fullres_samples" / "NORMAL").glob("*.jpeg"))
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    console_errors = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    page.goto(live.url + "/upload/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/upload/"))
    page.fill("#id_username", DOCTOR)
    page.fill("#id_password", "wrong password")
    page.click("button[type=submit]")
    expect(page.locator(".alert-error")).to_contain_text("didn't match")
    page.fill("#id_username", DOCTOR)
    page.fill("#id_password", DOCTOR_PASSWORD)
    page.screenshot(path=str(shots / "01-login.png"))
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/upload/$"))
    expect(page.locator("h1")).to_have_text("New analysis")

    # file picker -> preview -> analyse -> the result page
    page.set_input_files("#id_images", str(pneumonia[0]))
    expect(page.locator(".preview")).to_have_count(1)
    expect(page.locator(".preview-img img")).to_have_js_property("complete", True)
    page.screenshot(path=str(shots / "02-upload-preview.png"))
    page.click("#analyse-btn")
    page.wait_for_url(re.compile(r"/results/[0-9a-f-]{36}/$"), timeout=60_000)
    verdict = page.locator("#verdict").inner_text()
    assert verdict in ("NORMAL", "PNEUMONIA")
    assert re.fullmatch(r"\d{1,3}(\.\d)?%", page.locator("#probability").inner_text())
    assert re.fullmatch(r"\d{1,3}(\.\d)?%", page.locator("#threshold").inner_text())
    expect(page.locator("#model")).to_contain_text(f"{registry['name']} v{registry['v1']}")
    expect(page.locator(".caution")).to_contain_text("does not replace")
    xray, heat = page.locator("img.xray"), page.locator("#heatmap")
    page.wait_for_function("() => [...document.querySelectorAll('#viewer img')].every(i => i.complete && i.naturalWidth > 0)")
    expect(heat).to_be_visible()
    assert xray.bounding_box() == heat.bounding_box()  # the heat map lies exactly over the X-ray
    page.screenshot(path=str(shots / "03-result-heatmap.png"), full_page=True)
    page.click("label[for=toggle-heatmap]")
    expect(heat).to_be_hidden()
    page.screenshot(path=str(shots / "04-result-heatmap-off.png"), full_page=True)
    page.click("label[for=toggle-heatmap]")
    expect(heat).to_be_visible()

    # drag and drop two files (one not an X-ray): progress, per-file outcome, nothing lost
    page.goto(live.url + "/upload/")
    payload = [{"name": normal[0].name, "type": "image/jpeg", "b64": base64.b64encode(normal[0].read_bytes()).decode()},
               {"name": "notes.png", "type": "image/png", "b64": base64.b64encode(b"not an image at all").decode()}]
    page.evaluate("""(files) => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name, {type: f.type}));
        }
        const zone = document.getElementById('dropzone');
        zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", payload)
    expect(page.locator(".preview")).to_have_count(2)
    expect(page.locator("#analyse-btn")).to_have_text("Analyse 2 images")
    page.click("#analyse-btn")
    expect(page.locator("#upload-status")).to_contain_text("1 of 2 analysed", timeout=60_000)
    expect(page.locator(".preview.is-done")).to_have_count(1)
    expect(page.locator(".preview.is-error")).to_contain_text("not an image")
    page.screenshot(path=str(shots / "05-upload-several.png"), full_page=True)

    page.goto(live.url + "/history/")
    expect(page.locator(".history-item")).to_have_count(2)
    page.wait_for_function("() => [...document.querySelectorAll('.history img')].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(shots / "06-history.png"), full_page=True)

    # the same result on a phone
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    ppage = phone.new_page()
    ppage.goto(live.url + "/accounts/login/")
    ppage.fill("#id_username", DOCTOR)
    ppage.fill("#id_password", DOCTOR_PASSWORD)
    ppage.click("button[type=submit]")
    ppage.goto(live.url + page.locator(".history-link").first.get_attribute("href"))
    ppage.wait_for_function("() => [...document.querySelectorAll('#viewer img')].every(i => i.complete && i.naturalWidth > 0)")
    assert ppage.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    ppage.screenshot(path=str(shots / "07-result-phone.png"), full_page=True)
    phone.close()
    context.close()
    assert not [e for e in console_errors if "favicon" not in e and "400" not in e], console_errors


# --- production settings on PostgreSQL --------------------------------------------------------------
@pytest.fixture
def postgres_db():
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"xray_web_test_{uuid.uuid4().hex[:8]}"
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def test_production_settings_on_postgresql(registry, postgres_db, tmp_path, xray_jpeg):
    import psycopg2

    port = free_port()
    env = site_env(registry, tmp_path / "data", port, DJANGO_ENV="production", DATABASE_URL=postgres_db,
                   DJANGO_ALLOWED_HOSTS="127.0.0.1,xray.hospital.example", WEB_WORKERS="1")
    env.pop("DJANGO_DEBUG")

    # refuses to start without a secret key or allowed hosts (importing the settings is enough)
    for drop in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS"):
        bad = subprocess.run([site_python(), "-c", "import xray_site.settings"], cwd=REPO / "django_app", text=True,
                             env={k: v for k, v in env.items() if k != drop}, capture_output=True, timeout=60)
        assert bad.returncode != 0 and "ImproperlyConfigured" in bad.stderr and drop in bad.stderr
    deploy = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    site = Site(env, port, tmp_path / "web.log")
    try:
        site.wait_ready()  # /healthz answers over plain HTTP (load balancer checks)
        plain = requests.get(site.url + "/upload/", allow_redirects=False, timeout=10)
        assert plain.status_code == 301 and plain.headers["Location"].startswith("https://")
        https = {"X-Forwarded-Proto": "https"}  # what the TLS-terminating proxy adds
        s = requests.Session()
        s.headers.update(https)
        login = s.get(site.url + "/accounts/login/", timeout=10)
        assert login.status_code == 200 and "max-age=31536000" in login.headers["Strict-Transport-Security"]
        assert re.search(r"csrftoken=[^;]+;.*Secure", login.headers["Set-Cookie"])
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
        # a secure cookie is never sent back over plain HTTP by a browser; requests needs telling
        r = s.post(site.url + "/accounts/login/", allow_redirects=False, timeout=10,
                   data={"username": DOCTOR, "password": DOCTOR_PASSWORD, "csrfmiddlewaretoken": csrf},
                   headers={"Referer": f"https://127.0.0.1:{port}/accounts/login/",
                            "Cookie": f"csrftoken={s.cookies['csrftoken']}"})
        assert r.status_code == 302, r.text[:500]
        session_cookie = r.headers["Set-Cookie"]
        assert "sessionid=" in session_cookie and "Secure" in session_cookie and "HttpOnly" in session_cookie
        sid = re.search(r"sessionid=([^;]+)", session_cookie).group(1)
        page = s.get(site.url + "/upload/", headers={"Cookie": f"sessionid={sid}"}, timeout=60)
        assert page.status_code == 200 and "New analysis" in page.text

        out = manage(env, "create_doctor", "pg_client", "--password", "pg-client-pass-77", "--token")
        token = re.search(r"API token \(shown once\): (\S+)", out.stdout).group(1)
        r = requests.post(site.url + "/api/predict", files={"image": ("x.jpeg", xray_jpeg)}, timeout=60,
                          headers={"Authorization": f"Token {token}", **https})
        assert r.status_code == 200, r.text
        with psycopg2.connect(postgres_db) as conn, conn.cursor() as cur:
            cur.execute("SELECT model_name, model_version, label FROM diagnosis_diagnosis")
            assert cur.fetchall() == [(registry["name"], r.json()["model_version"], r.json()["label"])]
    finally:
        site.stop()
