"""Settings for the doctors' site, all from the environment, with local defaults that just work.

Two modes, chosen by DJANGO_ENV:
- ``development`` (default): DEBUG on unless DJANGO_DEBUG=0, a fixed development secret key,
  SQLite and uploads under ``<repo>/.local/web``, plain-HTTP cookies. ``make run`` needs nothing.
- ``production``: DEBUG off unless DJANGO_DEBUG=1, DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS
  required, secure cookies, HTTPS redirect and HSTS (the TLS proxy sets X-Forwarded-Proto).

Whatever the mode, a DEBUG-off process refuses to start without DJANGO_SECRET_KEY.
Nothing here imports torch or mlflow: the model is loaded on first use (diagnosis.champion).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from pipeline.mlops.server import CHAMPION
from pipeline.settings.config import load_params, model_name

BASE_DIR = Path(__file__).resolve().parent.parent  # django_app/
REPO_ROOT = BASE_DIR.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    value = value.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false, on/off)")


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_number(name: str, default, kind=float):
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return kind(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None


ENVIRONMENT = os.environ.get("DJANGO_ENV", "development").strip().lower()
if ENVIRONMENT not in ("development", "production"):
    raise ImproperlyConfigured(f"DJANGO_ENV must be 'development' or 'production', not {ENVIRONMENT!r}")
PRODUCTION = ENVIRONMENT == "production"

DEBUG = env_bool("DJANGO_DEBUG", not PRODUCTION)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DEBUG is off (generate one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
    SECRET_KEY = "django-insecure-development-only-never-use-in-production"
# Production refuses what `check --deploy` only warns about (W009) and .env.example's placeholder:
# a known key signs forged sessions and password-reset tokens (issue 11, item 3).
if PRODUCTION and (re.search(r"change-?me|placeholder|example|insecure", SECRET_KEY, re.I)
                   or len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY is a placeholder or weak (50+ characters of random text needed: "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))', or docker/gen-env.sh)")

if PRODUCTION and not os.environ.get("DJANGO_ALLOWED_HOSTS"):
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must be set in production (comma separated)")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# Where the site keeps its state: SQLite database (default), uploaded images, collected static.
DATA_DIR = Path(os.environ.get("XRAY_WEB_DATA_DIR", REPO_ROOT / ".local" / "web")).expanduser()
MEDIA_ROOT = Path(os.environ.get("XRAY_MEDIA_ROOT", DATA_DIR / "media")).expanduser()
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", DATA_DIR / "staticfiles")).expanduser()
# the salt of patient keys (diagnosis.local_cases), next to the stack's other generated secrets
XRAY_SECRETS_DIR = Path(os.environ.get("XRAY_SECRETS_DIR", DATA_DIR.parent / "secrets")).expanduser()
MEDIA_URL = None  # uploads are never served as static files: only through diagnosis.views.image

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "diagnosis",
    "ninja",   # /api/v1/docs: its Swagger UI files, served by whitenoise (no CDN)
]

MIDDLEWARE = [
    # first: an over-limit Content-Length is refused before CSRF parses the body or auth runs
    "xray_site.middleware.RequestSizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # before any process_view (CSRF reads the body there): anonymous bodies stay small
    "xray_site.middleware.AnonymousBodyLimitMiddleware",
    # staff accounts pass a second step (TOTP) before any page (issue 25 item 18)
    "diagnosis.mfa.StaffMfaMiddleware",
    # every page needs a signed-in user unless its view says @login_not_required (sign-in, the
    # token API, /healthz): a new view is private by default
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "xray_site.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "xray_site.urls"
WSGI_APPLICATION = "xray_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "diagnosis.context_processors.site",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}",
        conn_max_age=int(env_number("DJANGO_DB_CONN_MAX_AGE", 60, int)),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several threads/workers write: WAL lets readers and one writer work together, IMMEDIATE
    # transactions queue writers instead of failing, synchronous=NORMAL skips an fsync per commit
    # (still durable across application crashes; WAL is the mode SQLite recommends for this).
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options.setdefault("timeout", 20)
    _options.setdefault("transaction_mode", "IMMEDIATE")
    _options.setdefault("init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
    if DATABASES["default"]["NAME"] not in ("", ":memory:"):
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    # 12+ characters, and not in a list of breached / common passwords (issue 25 item 18): Django's
    # 20,000 most common ones, plus the site's own file when XRAY_BREACHED_PASSWORDS names one
    # (one password a line, optionally .gz: e.g. a local extract of a breach corpus; no network)
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
if os.environ.get("XRAY_BREACHED_PASSWORDS"):
    AUTH_PASSWORD_VALIDATORS.append({
        "NAME": "django.contrib.auth.password_validation.CommonPasswordValidator",
        "OPTIONS": {"password_list_path": os.environ["XRAY_BREACHED_PASSWORDS"]}})

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "upload"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = os.environ.get("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG  # development: no collectstatic needed

# --- uploads -------------------------------------------------------------------------------
# The pipeline's settings (params.yaml, or the file $XRAY_PARAMS names, as the DAGs read it), read
# and checked once: the registered model's name, the drift limits, and the image limits, whose one
# home is `data:` (training applies the same ones); the environment may override those for a site.
XRAY_PIPELINE_PARAMS = load_params(os.environ.get("XRAY_PARAMS") or None)
_IMAGE_LIMITS = XRAY_PIPELINE_PARAMS.data
XRAY_MAX_UPLOAD_MB = env_number("XRAY_MAX_UPLOAD_MB", _IMAGE_LIMITS.max_file_mb)
XRAY_MAX_UPLOAD_BYTES = int(XRAY_MAX_UPLOAD_MB * 1024 * 1024)
XRAY_MAX_FILES = int(env_number("XRAY_MAX_FILES_PER_UPLOAD", 10, int))
# upload rate limits (diagnosis/ratelimit.py); counted in CACHES: Redis when XRAY_CACHE_URL is set
XRAY_UPLOADS_PER_MINUTE = int(env_number("XRAY_UPLOADS_PER_MINUTE", 120, int))
XRAY_TOKEN_UPLOADS_PER_MINUTE = int(env_number("XRAY_TOKEN_UPLOADS_PER_MINUTE", 120, int))
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": os.environ["XRAY_CACHE_URL"]}
          if os.environ.get("XRAY_CACHE_URL") else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
XRAY_MAX_PIXELS = int(env_number("XRAY_MAX_PIXELS", _IMAGE_LIMITS.max_pixels, int))
XRAY_MIN_SIDE = _IMAGE_LIMITS.min_side
# Body limits per route, refused from the Content-Length before anything parses the body
# (xray_site.middleware; nginx mirrors them: docs/configuration.md, "Request body limits"):
# - every small form (sign-in, admin, token page, sign-out), and any anonymous request: 64 KB;
XRAY_MAX_FORM_BODY_BYTES = int(env_number("XRAY_MAX_FORM_BODY_KB", 64, int)) * 1024
# - POST /api/predict: one file at the limit + form overhead (51 MB with the default 50 MB);
XRAY_MAX_REQUEST_BYTES = XRAY_MAX_UPLOAD_BYTES + 1024 * 1024
XRAY_MAX_API_BODY_BYTES = XRAY_MAX_REQUEST_BYTES
# - POST /upload/ (the batch page, signed-in doctors only): its file limit of them (510 MB).
XRAY_MAX_BODY_BYTES = XRAY_MAX_REQUEST_BYTES * max(1, XRAY_MAX_FILES)
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024  # bigger uploads spool to a temp file
DATA_UPLOAD_MAX_NUMBER_FILES = XRAY_MAX_FILES
FILE_UPLOAD_PERMISSIONS = 0o640
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o750

# --- the champion model ----------------------------------------------------------------------
XRAY_MODEL_NAME = model_name(XRAY_PIPELINE_PARAMS)  # $XRAY_MODEL_NAME, else params registry.model_name
MLFLOW_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
XRAY_CHAMPION_ALIAS = os.environ.get("XRAY_CHAMPION_ALIAS", CHAMPION)
XRAY_CHAMPION_CHECK_SECONDS = env_number("XRAY_CHAMPION_CHECK_SECONDS", 30.0)
XRAY_CHAMPION_RETRY_SECONDS = env_number("XRAY_CHAMPION_RETRY_SECONDS", 10.0)
XRAY_CHAMPION_LOAD_TIMEOUT = env_number("XRAY_CHAMPION_LOAD_TIMEOUT", 120.0)
XRAY_INFERENCE_THREADS = int(env_number("XRAY_INFERENCE_THREADS", 0, int))  # OpenVINO's threads; 0 = its default
XRAY_MAX_BATCH = int(env_number("XRAY_MAX_BATCH", 8, int))  # concurrent requests per forward pass
# Every answer comes from the version's ONNX file in OpenVINO (pipeline.inference.served, no torch).
# The fast path: int8 or bf16 for versions whose agreement check passed; off = always the float32 file.
XRAY_FAST_PATH = env_bool("XRAY_FAST_PATH", True)
XRAY_HISTORY_PAGE_SIZE = int(env_number("XRAY_HISTORY_PAGE_SIZE", 12, int))
# Shadow mode (diagnosis.shadow, docs/site.md): a pending challenger answers every live request in
# the background; its answers are stored for staff, never shown to doctors. off = no shadow.
XRAY_SHADOW = env_bool("XRAY_SHADOW", True)
XRAY_SHADOW_QUEUE = max(1, int(env_number("XRAY_SHADOW_QUEUE", 16, int)))  # full: the request is not shadowed
XRAY_SHADOW_NICE = int(env_number("XRAY_SHADOW_NICE", 19, int))  # the shadow's threads yield the CPU
XRAY_SHADOW_MAX_WAIT = env_number("XRAY_SHADOW_MAX_WAIT", 2.0)  # seconds it waits for doctors' answers
# API tokens stop working this many days after they are issued (rotate them on the API page)
XRAY_API_TOKEN_DAYS = int(env_number("XRAY_API_TOKEN_DAYS", 90, int))

# --- the PACS (docs/pacs.md): Orthanc from `make run` by default; a hospital names its own here -------
XRAY_PACS_URL = os.environ.get("XRAY_PACS_URL", "http://127.0.0.1:8042").rstrip("/")
XRAY_PACS_DICOMWEB = os.environ.get("XRAY_PACS_DICOMWEB", XRAY_PACS_URL + "/dicom-web").rstrip("/")
XRAY_PACS_AET = os.environ.get("XRAY_PACS_AET", "XRAYPACS")
XRAY_PACS_DICOM_PORT = int(env_number("XRAY_PACS_DICOM_PORT", 4242, int))
XRAY_PACS_USER = os.environ.get("XRAY_PACS_USER", "pacs")
# the password: $XRAY_PACS_PASSWORD, else the file the local stack generates (scripts/stack_pacs.py)
XRAY_PACS_PASSWORD_FILE = Path(os.environ.get("XRAY_PACS_PASSWORD_FILE", XRAY_SECRETS_DIR / "pacs_password"))
XRAY_PACS_PASSWORD = os.environ.get("XRAY_PACS_PASSWORD") or (
    XRAY_PACS_PASSWORD_FILE.read_text().strip() if XRAY_PACS_PASSWORD_FILE.is_file() else "")
XRAY_PACS_ACCOUNT = os.environ.get("XRAY_PACS_ACCOUNT", "pacs-worker")  # owns the PACS results
XRAY_PACS_POLL_SECONDS = env_number("XRAY_PACS_POLL_SECONDS", 1.0)
XRAY_PACS_CLAIM_SECONDS = env_number("XRAY_PACS_CLAIM_SECONDS", 300.0)  # a dead worker's claim expires
XRAY_PACS_ADULTS = os.environ.get("XRAY_PACS_ADULTS", "warn").strip().lower()  # warn | refuse
XRAY_PACS_ADULT_AGE = env_number("XRAY_PACS_ADULT_AGE", 18.0)  # years

# --- security ----------------------------------------------------------------------------------
SECURE_COOKIES = env_bool("DJANGO_SECURE_COOKIES", PRODUCTION)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = int(env_number("DJANGO_SESSION_SECONDS", 8 * 3600, int))  # one shift
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
if env_bool("DJANGO_BEHIND_HTTPS_PROXY", PRODUCTION):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # container health checks speak plain HTTP
SECURE_HSTS_SECONDS = int(env_number("DJANGO_HSTS_SECONDS", 31536000 if PRODUCTION else 0, int))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", SECURE_HSTS_SECONDS > 0)
# Preloading binds the hospital's whole domain to HTTPS in every browser, for good: the domain
# owner's decision, so off unless asked for (and its deploy-check warning silenced meanwhile).
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
# axes.W003 asks for axes' own backend: ours (diagnosis.access) does the same lockout check before the
# password check, in one backend, so that force_login and management commands keep working.
SILENCED_SYSTEM_CHECKS += ["axes.W003"]
SECURE_CONTENT_TYPE_NOSNIFF = True
# issue 25 item 18; the uploaded images carry their own, stricter one (default-src 'none')
XRAY_CONTENT_SECURITY_POLICY = os.environ.get("XRAY_CONTENT_SECURITY_POLICY") or (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# --- login throttling and admin access (issue 11 item 9; see diagnosis/access.py) ---------------
INSTALLED_APPS += ["axes"]
# first of all but the security headers: a client kept out of /admin/ costs no session or CSRF work
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
                  "diagnosis.access.AdminAccessMiddleware")
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last, as axes requires
AUTHENTICATION_BACKENDS = ["diagnosis.access.LoginThrottleBackend"]  # axes' check + ModelBackend
AXES_ENABLED = env_bool("XRAY_LOGIN_THROTTLE", True)
AXES_FAILURE_LIMIT = int(env_number("XRAY_LOGIN_FAILURE_LIMIT", 5, int))
AXES_COOLOFF_TIME = env_number("XRAY_LOGIN_COOLOFF_MINUTES", 15.0) / 60.0  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
# and per address, across usernames (diagnosis.access.address_locked_out): password spraying
XRAY_LOGIN_IP_FAILURE_LIMIT = int(env_number("XRAY_LOGIN_IP_FAILURE_LIMIT", 30, int))
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "diagnosis.access.client_ip"
AXES_HTTP_RESPONSE_CODE = 429
XRAY_TRUSTED_PROXIES = env_list("XRAY_TRUSTED_PROXIES", [])
XRAY_ADMIN_ENABLED = env_bool("XRAY_ADMIN_ENABLED", True)
XRAY_ADMIN_ALLOWED_NETWORKS = env_list("XRAY_ADMIN_ALLOWED_NETWORKS", [])  # [] = any network
try:
    import ipaddress as _ip

    XRAY_TRUSTED_PROXIES = [_ip.ip_network(n, strict=False) for n in XRAY_TRUSTED_PROXIES]
    XRAY_ADMIN_ALLOWED_NETWORKS = [_ip.ip_network(n, strict=False) for n in XRAY_ADMIN_ALLOWED_NETWORKS]
except ValueError as _exc:
    raise ImproperlyConfigured(f"XRAY_TRUSTED_PROXIES / XRAY_ADMIN_ALLOWED_NETWORKS: {_exc}") from None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
