"""Issue 25: every hostile file is refused with a 4xx and a reason, within 2 s and +200 MiB, by the
real site under gunicorn (API and upload page) and by the registered pyfunc; the site still
answers a real X-ray afterwards, and a 12-bit PNG with sBIT is answered like its 8-bit JPEG."""
from __future__ import annotations

import io
import time

import pytest
import requests

from livesite import DOCTOR, DOCTOR_PASSWORD, predict
from hostile_files import PeakMemory, hostile, twelve_bit_png

SECONDS = 2.0
MEMORY_MIB = 200


@pytest.fixture(scope="module")
def files():
    return hostile()


def _login(site) -> requests.Session:
    s = requests.Session()
    page = s.get(site.url + "/accounts/login/", timeout=30)
    token = page.cookies.get("csrftoken") or s.cookies.get("csrftoken")
    r = s.post(site.url + "/accounts/login/", data={"username": DOCTOR, "password": DOCTOR_PASSWORD,
                                                     "csrfmiddlewaretoken": token},
               headers={"Referer": site.url + "/accounts/login/"}, timeout=30)
    assert r.ok and "/accounts/login/" not in r.url, (r.status_code, r.url)
    return s


def test_every_hostile_file_is_refused_quickly_with_bounded_memory_by_the_live_site(live, files, xray_jpeg):
    assert predict(live, xray_jpeg).status_code == 200  # warm: model loaded, decoders started
    page = _login(live)
    csrf = page.cookies.get("csrftoken")
    report = []
    for name, (filename, blob, word) in files.items():
        for route in ("api", "page"):
            with PeakMemory(live.proc.pid) as mem:
                started = time.perf_counter()
                if route == "api":
                    r = predict(live, blob, name=filename)
                    reason = r.json().get("detail", "") if r.headers.get("content-type", "").startswith(
                        "application/json") else r.text
                else:
                    r = page.post(live.url + "/upload/", files={"images": (filename, blob)},
                                  data={"csrfmiddlewaretoken": csrf},
                                  headers={"Referer": live.url + "/upload/"}, timeout=60)
                    reason = r.text
                seconds = time.perf_counter() - started
            report.append((name, route, r.status_code, round(seconds, 2), round(mem.mib)))
            assert 400 <= r.status_code < 500, (name, route, r.status_code, reason[:300])
            assert word.lower() in reason.lower(), (name, route, reason[:300])
            assert seconds < SECONDS, (name, route, seconds)
            assert mem.mib < MEMORY_MIB, (name, route, mem.mib)
    print("\n".join(map(str, report)))
    r = predict(live, xray_jpeg)
    assert r.status_code == 200 and r.json()["label"] in ("NORMAL", "PNEUMONIA")


def test_a_12_bit_png_is_answered_like_its_8_bit_jpeg_by_the_live_site(live, xray_jpeg):
    from PIL import Image

    png = twelve_bit_png(Image.open(io.BytesIO(xray_jpeg)))
    as_png, as_jpeg = predict(live, png, name="film.png").json(), predict(live, xray_jpeg).json()
    assert as_png["label"] == as_jpeg["label"]
    assert as_png["probability"] == pytest.approx(as_jpeg["probability"], abs=0.02)


def test_every_hostile_file_is_an_error_row_of_the_pyfunc_with_bounded_memory(registry, files, xray_jpeg):
    import os

    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(f"models:/{registry['name']}/{registry['v1']}")
    assert model.predict(pd.DataFrame({"image": [xray_jpeg]}))["error"][0] == ""  # warm
    for name, (_, blob, word) in files.items():
        with PeakMemory(os.getpid()) as mem:
            started = time.perf_counter()
            row = model.predict(pd.DataFrame({"image": [blob]})).iloc[0]
            seconds = time.perf_counter() - started
        assert row["label"] == "" and word.lower() in row["error"].lower(), (name, row["error"])
        assert seconds < SECONDS and mem.mib < MEMORY_MIB, (name, seconds, mem.mib)
    assert model.predict(pd.DataFrame({"image": [xray_jpeg]}))["label"][0] in ("NORMAL", "PNEUMONIA")
