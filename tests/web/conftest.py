"""Fixtures for the doctors' site: Django configured in-process against a throw-away database,
a real MLflow server with tiny real models registered, and doctors to sign in as.

No pytest-django: a session fixture creates the test database, `db` wraps each test in a
transaction that is rolled back (as django.test.TestCase does).
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DJANGO_DIR = REPO / "django_app"
WEB_TMP = Path(tempfile.mkdtemp(prefix="xray-web-tests-"))
atexit.register(shutil.rmtree, WEB_TMP, ignore_errors=True)

# Settings are read once, at django.setup(): everything the in-process site needs, set first.
os.environ["DJANGO_SETTINGS_MODULE"] = "xray_site.settings"
os.environ["DJANGO_ENV"] = "development"
os.environ["DJANGO_DEBUG"] = "1"  # plain static storage; the test runner still switches DEBUG off
os.environ["XRAY_WEB_DATA_DIR"] = str(WEB_TMP / "data")
os.environ["XRAY_MAX_UPLOAD_MB"] = "4"  # small, so that "too large" is cheap to test
os.environ.pop("DATABASE_URL", None)
os.environ.pop("XRAY_MODEL_NAME", None)  # tests name their model explicitly
os.environ.setdefault("XRAY_MODEL_CACHE_DIR", str(WEB_TMP / "model-cache"))  # not the repo's .cache
# The registry fixture leaves v2 a pending challenger: tests that want the shadow switch it on themselves
# (tests/web/test_shadow.py), so the others stay single-model and deterministic.
os.environ["XRAY_SHADOW"] = "off"

from livesite import CHROMIUM, CHROMIUM_ARGS, Site, manage, site_env  # noqa: E402
from webutil import (MODEL_NAME, ensure_champion, free_port, make_holder, make_user,  # noqa: E402
                     register_version, set_champion, threshold_variant)


@pytest.fixture(scope="session")
def django_db():
    import django
    from django.db import connection
    from django.test.utils import setup_test_environment, teardown_test_environment

    django.setup()
    setup_test_environment()
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed, tests only
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    yield
    connection.creation.destroy_test_db(":memory:", verbosity=0)
    teardown_test_environment()


@pytest.fixture
def db(django_db):
    """Each test in a transaction rolled back at the end."""
    from django.db import transaction

    atomic = transaction.atomic()
    atomic.__enter__()
    try:
        yield
    finally:
        transaction.set_rollback(True)
        atomic.__exit__(None, None, None)


@pytest.fixture
def doctor(db):
    return make_user("dr_house")


@pytest.fixture
def other_doctor(db):
    return make_user("dr_cuddy")


@pytest.fixture
def client(db):
    from django.test import Client

    return Client()


@pytest.fixture
def doctor_client(doctor):
    from django.test import Client

    c = Client()
    c.force_login(doctor)
    return c


# --- images ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fullres_images(shared_datasets) -> list[Path]:
    files = sorted((shared_datasets / "fullres_samples").glob("*/*.jpeg"))
    if not files:
        pytest.skip("no full-resolution samples")
    return files


@pytest.fixture(scope="session")
def pneumonia_jpeg(shared_datasets, tiny_checkpoint) -> bytes:
    return accepted(sorted((shared_datasets / "fullres_samples" / "PNEUMONIA").glob("*.jpeg")), tiny_checkpoint)


@pytest.fixture(scope="session")
def xray_jpeg(fullres_images, tiny_checkpoint) -> bytes:
    """A real full-resolution X-ray, as a doctor would upload it."""
    return accepted(fullres_images, tiny_checkpoint)


def accepted(paths, checkpoint) -> bytes:
    """The first real X-ray that the session's model does not refuse. These page tests are about
    the pages; the tiny model's learned gate (one epoch, 64 px) refuses a few real films, which the
    gate's own tests measure (tests/model/test_gate.py, tests/web/test_gate_web.py)."""
    from pipeline.inference.gate import NotAChestXray
    from pipeline.inference.predict import Predictor
    from pipeline.inference.answer import answer_file

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    for path in paths:
        data = Path(path).read_bytes()
        try:
            answer_file(data, predictor)
            return data
        except NotAChestXray:
            continue
    raise AssertionError("the session model's gate refuses every sample")


# --- the model registry ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def registry(mlflow_server, tiny_checkpoint, tmp_path_factory):
    """Two real versions of one model in a real MLflow registry, champion = v1.
    v1 is the tiny trained model; v2 is the same network with threshold 0 (it answers PNEUMONIA
    for everything), so a test can tell from the answer which version replied."""
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server  # other suites' servers may have set it meanwhile
    tmp = tmp_path_factory.mktemp("web-models")
    v1 = register_version(mlflow_server, MODEL_NAME, tiny_checkpoint)
    v2 = register_version(mlflow_server, MODEL_NAME, threshold_variant(tiny_checkpoint, 0.0, tmp / "model.pt"))
    set_champion(mlflow_server, MODEL_NAME, v1)
    return {"uri": mlflow_server, "name": MODEL_NAME, "v1": v1, "v2": v2}


@pytest.fixture(autouse=True)
def _tracking_uri_of_this_suite(request, monkeypatch):
    """Every web test talks to the web suite's MLflow server, whatever ran before it."""
    if "registry" in request.fixturenames:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", request.getfixturevalue("registry")["uri"])


@pytest.fixture(scope="session")
def session_holder(registry, django_db):
    """One loaded champion (v1) for the whole session; tests that move the alias use their own."""
    holder = make_holder(registry["uri"], registry["name"])
    assert holder.get() is not None
    return holder


@pytest.fixture
def champion(session_holder, registry):
    """The process-wide holder is the session one, serving v1."""
    from diagnosis import champion as mod

    ensure_champion(registry["uri"], registry["name"], registry["v1"])
    previous = mod.reset_holder(session_holder)
    yield session_holder
    mod.reset_holder(previous)


@pytest.fixture
def media_files():
    """A function listing the files added under MEDIA_ROOT since the test began (to prove nothing
    was stored; the database is rolled back after each test, files of earlier tests stay)."""
    from django.conf import settings

    def everything():
        root = Path(settings.MEDIA_ROOT)
        return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()

    before = everything()

    def files():
        return sorted(everything() - before)

    return files


# --- the site under gunicorn, and a real browser (tests/web/test_live.py, test_gate_web.py) ----------
@pytest.fixture(scope="module")
def live(registry, tmp_path_factory):
    """gunicorn (2 sync workers) over SQLite, DEBUG off, champion from the real MLflow server."""
    tmp = tmp_path_factory.mktemp("live")
    port = free_port()
    env = site_env(registry, tmp / "data", port)
    set_champion(registry["uri"], registry["name"], registry["v1"])
    site = Site(env, port, tmp / "web.log").wait_ready()
    out = manage(env, "create_doctor", "api_client", "--password", "api-client-pass-77", "--token")
    assert out.returncode == 0, out.stderr
    site.token = re.search(r"API token \(shown once\): (\S+)", out.stdout).group(1)
    yield site
    site.stop()
    set_champion(registry["uri"], registry["name"], registry["v1"])



@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
