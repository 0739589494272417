"""gunicorn settings for the doctors' site, from the environment (docs/configuration.md, "The web site").

Layout: one worker per core (at most 8: each holds its own copy of the model in OpenVINO), 4 request
threads each. Each worker has one inference thread that batches the requests its threads bring
(diagnosis.batching), running the model on cores/workers threads, so concurrent requests share
forward passes instead of fighting over the cores. A lone answer, while no other is being computed
on the site, runs on every core (pipeline.inference.concurrency). Why one per core: a request spends
~10 ms in Python (decoding, the gate, Django, storage) against 2-5 ms of int8 inference per film
(Xeon with AMX / Zen 4, one core), and one process runs Python on one core at a time (the GIL).
Measured on 2 cores (docs/benchmarks.md, 2026-11-25): 2 workers x 4 threads gave 145 req/s at
concurrency 8 against 108 for 1 x 8 on the int8 fast path, and 72 against 57 on the float32
reference.
"""
import os

import pipeline.inference.concurrency  # noqa: F401 - made here, in the master: the workers share its count
from xray_site import request_body

request_body.install()  # uploads read in 64 KiB blocks, not gunicorn's 1 KiB (xray_site/request_body.py)

_cores = os.cpu_count() or 1

bind = os.environ.get("WEB_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_WORKERS", str(min(_cores, 8))))
threads = int(os.environ.get("WEB_THREADS", "4"))
worker_class = "gthread" if threads > 1 else "sync"
timeout = int(os.environ.get("WEB_TIMEOUT", "120"))  # first request of a worker may load the model
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", "0"))  # recycle workers (0 = never)
max_requests_jitter = max_requests // 10
accesslog = os.environ.get("WEB_ACCESS_LOG", "-") or None  # "" = no access log
errorlog = "-"
loglevel = os.environ.get("WEB_LOG_LEVEL", "info")
chdir = os.path.dirname(os.path.abspath(__file__))
forwarded_allow_ips = os.environ.get("WEB_FORWARDED_ALLOW_IPS", "127.0.0.1")
# a proxy buffers uploads; direct clients are bounded by the upload limit in Django
limit_request_line = 8190
# header limits (gunicorn has no body limit: RequestSizeLimitMiddleware and the nginx proxy refuse
# big bodies from their Content-Length before anything reads them)
limit_request_fields = 100
limit_request_field_size = 8190

# inference threads per worker: the cores shared out (XRAY_INFERENCE_THREADS overrides)
os.environ.setdefault("XRAY_INFERENCE_THREADS", str(max(1, _cores // max(1, workers))))
os.environ.setdefault("OMP_NUM_THREADS", os.environ["XRAY_INFERENCE_THREADS"])


def post_worker_init(worker):
    """Start loading the champion as soon as the worker is up (on the holder's long-lived refresh
    thread), so the first doctor does not wait; a request arriving meanwhile waits for that load."""
    if os.environ.get("XRAY_PRELOAD_CHAMPION", "1") in ("0", "false", "no", "off"):
        return
    try:
        from diagnosis.champion import holder

        holder().get(wait=False)
    except Exception:  # logged by the holder; requests will retry
        worker.log.exception("champion preload failed")
