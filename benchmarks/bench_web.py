"""POST /api/v1/predict under gunicorn vs `mlflow models serve`, same champion, same images, one run.

    .venv/bin/python benchmarks/bench_web.py [--checkpoint model.pt] [--requests 80] [--json out.json]

What it does
1. Starts a throw-away MLflow server (SQLite, tmp dir) and registers the champion through
   pipeline.mlops.aliases: --checkpoint, or by default an untrained ResNet18 at params.yaml's image
   size (latency does not depend on the weights). --tracking-uri uses an existing server's
   champion instead.
2. Starts the site exactly as production does (scripts/web_server.sh: migrate, collectstatic,
   gunicorn with gunicorn.conf.py and its defaults; DEBUG off) and `mlflow models serve
   --env-manager local` on models:/<name>@champion with one uvicorn worker per core.
3. Sends every full-resolution X-ray of fullres_samples to each, at concurrency 1 and 8 (after a
   warm-up), and prints p50/p95 latency, throughput and the ratios.
4. Prints the site's fast path against the float32 reference (pipeline.inference.served) on the held-out
   patients and the stress shifts of --data: label agreement, AUC of each, gate agreement. A
   version registered here is checked (and tagged) first, as the DAG's evaluate task does, so
   the site uses the fast path exactly when the DAG would let it.

The Django request does more than the MLflow one: token authentication, storing the upload and
a database row (the doctor's history), answering JSON. The MLflow request carries the image
base64 in JSON ({"dataframe_split": ...}), the format its scoring server accepts.
Targets (issue 28): p50 <= 15 ms at concurrency 1; throughput at 8 clients >= 3x mlflow serve;
fast path labels agree >= 99.5 %, AUC within 0.002 (and, the product's own rule, calibration
error up by <= 0.01). The site answers from the ONNX file without torch; mlflow serve runs the
pyfunc (float32 torch).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
MODEL_NAME = "bench-web-xray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready:\n{log.read_text()[-3000:]}")


def start(cmd, env, log: Path, cwd=REPO) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def mlflow_server(tmp: Path, env: dict, procs: list) -> str:
    """A fresh MLflow server (SQLite + local artifacts) under `tmp`, added to `procs`; its URI, also
    exported as MLFLOW_TRACKING_URI."""
    port = free_port()
    uri, log = f"http://127.0.0.1:{port}", tmp / "mlflow-server.log"
    procs.append(start([PY, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                        "--artifacts-destination", str(tmp / "artifacts"), "--serve-artifacts",
                        "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env, log))
    wait(uri + "/health", procs[-1], log)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


def untrained_checkpoint(dest: Path, image_size: int) -> Path:
    import datetime as dt

    import torch

    from pipeline.settings import config
    from pipeline.model.network import ARCH, build_model

    model = build_model("scratch")
    torch.save({"state_dict": model.state_dict(), "arch": ARCH, "in_channels": 1, "image_size": image_size,
                "threshold": 0.5, "classes": list(config.CLASSES), "params": {}, "metrics": {},
                "created": dt.datetime.now(dt.timezone.utc).isoformat()}, dest)
    return dest


def measure(send, images: list[bytes], n: int, concurrency: int) -> dict:
    """n requests cycling over the images, `concurrency` clients, each with its own session."""
    latencies, errors, lock = [], [], threading.Lock()
    counter = iter(range(n))
    local = threading.local()

    def worker():
        local.session = requests.Session()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            ok = send(local.session, images[i % len(images)])
            dt_ms = (time.perf_counter() - t0) * 1000
            with lock:
                (latencies if ok else errors).append(dt_ms)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - started
    lat = sorted(latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] if lat else float("nan")  # noqa: E731
    return {"requests": n, "errors": len(errors), "p50_ms": round(statistics.median(lat), 1) if lat else None,
            "p95_ms": round(pct(0.95), 1), "throughput_rps": round(len(lat) / wall, 2), "wall_s": round(wall, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="model.pt to register as champion (default: untrained)")
    ap.add_argument("--tracking-uri", help="use this server's existing champion (no temporary server)")
    ap.add_argument("--model-name", default=None)
    ap.add_argument("--images", type=Path, default=Path(os.environ.get(
        "SHARED_DATASETS", REPO.parent / "shared" / "datasets")) / "fullres_samples")
    ap.add_argument("--requests", type=int, default=80, help="requests per measurement at concurrency 1")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="mlflow models serve workers (default: one per core, its best layout)")
    ap.add_argument("--web-workers", default=os.environ.get("WEB_WORKERS", ""),
                    help="gunicorn workers (default: gunicorn.conf.py's, one per core)")
    ap.add_argument("--web-threads", default=os.environ.get("WEB_THREADS", ""),
                    help="request threads per gunicorn worker (default: gunicorn.conf.py's)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DATA", REPO.parent / "shared" / "datasets"
                                                                     / "chest_xray")),
                    help="dataset whose held-out patients (and their stress shifts) score the fast path")
    ap.add_argument("--no-int8", action="store_true",
                    help="register the checkpoint without its int8 copy (the fast path is then bf16/f32)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--site-python", default=PY, help="the site's interpreter, e.g. a venv of requirements/web.txt "
                    "(the web image's packages: no torch); this checkout is put on its path")
    args = ap.parse_args()

    images = [p.read_bytes() for p in sorted(args.images.glob("*/*")) if p.suffix.lower() in (".jpeg", ".jpg", ".png")]
    if not images:
        sys.exit(f"no images under {args.images}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-web-"))
    procs: list[subprocess.Popen] = []
    env = dict(os.environ)
    env["PATH"] = f"{Path(PY).parent}{os.pathsep}{env.get('PATH', '')}"  # mlflow serve execs uvicorn
    env.setdefault("XRAY_MODEL_CACHE_DIR", str(tmp / "model-cache"))
    os.environ["XRAY_MODEL_CACHE_DIR"] = env["XRAY_MODEL_CACHE_DIR"]
    try:
        from pipeline.mlops import aliases, candidates, tracking
        from pipeline.settings import config
        from pipeline.data import training_data

        params = config.load_params()
        if args.tracking_uri:
            uri, name = args.tracking_uri, args.model_name or config.model_name(params)
            os.environ["MLFLOW_TRACKING_URI"] = uri  # the fast-path report below reads that server
        else:
            uri, name = mlflow_server(tmp, env, procs), args.model_name or MODEL_NAME
            ckpt = args.checkpoint or untrained_checkpoint(tmp / "model.pt", params.preprocess.image_size)
            reg_params = config.apply_overrides(params, {"registry.model_name": name,
                                                         "registry.experiment": "bench-web"})
            env_name = os.environ.pop("XRAY_MODEL_NAME", None)
            splits, _report, cache = training_data.load(args.data, params)
            version = tracking.register_checkpoint(ckpt, reg_params, tags={"trigger": "bench"}, data_root=args.data,
                                                   calibration=None if args.no_int8 else
                                                   [s.path for s in splits.train])["version"]
            candidates.check_fast_path(version, splits, params, cache, name)
            aliases.promote(version, name=name, force=True)
            if env_name is not None:
                os.environ["XRAY_MODEL_NAME"] = env_name
        env.update({"MLFLOW_TRACKING_URI": uri, "XRAY_MODEL_NAME": name})

        # the site, as production runs it
        web_port = free_port()
        web_env = {k: v for k, v in env.items()
                   if not k.startswith("DJANGO_") and k not in ("DATABASE_URL", "WEB_WORKERS", "WEB_THREADS")}
        web_env.update({"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "bench-" + "x" * 50,
                        "XRAY_WEB_DATA_DIR": str(tmp / "web"), "WEB_BIND": f"127.0.0.1:{web_port}",
                        "WEB_ACCESS_LOG": "", "PYTHON": args.site_python, "XRAY_CHAMPION_CHECK_SECONDS": "30",
                        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "django_app")]),
                        "XRAY_UPLOADS_PER_MINUTE": "1000000", "XRAY_TOKEN_UPLOADS_PER_MINUTE": "1000000"})
        web_env.update({k: v for k, v in (("WEB_WORKERS", args.web_workers), ("WEB_THREADS", args.web_threads)) if v})
        log = tmp / "web.log"
        procs.append(start(["bash", str(REPO / "scripts" / "web_server.sh")], web_env, log))
        web = f"http://127.0.0.1:{web_port}"
        wait(web + "/healthz?ready=1", procs[-1], log)
        root = psutil.Process(procs[-1].pid)
        gunicorn = [p for p in [root, *root.children(recursive=True)] if "gunicorn" in " ".join(p.cmdline())]
        workers = [p for p in gunicorn if p.ppid() in {g.pid for g in gunicorn}]   # not the master
        layout = f"{len(workers)} gunicorn worker(s) x {args.web_threads or 'gunicorn.conf.py default'} threads"
        out = subprocess.run([args.site_python, "manage.py", "create_doctor", "bench", "--password", "bench-password-123",
                              "--token"], cwd=REPO / "django_app", env=web_env, capture_output=True, text=True,
                             check=True)
        token = re.search(r"API token \(shown once\): (\S+)", out.stdout).group(1)
        version = None
        for _ in range(120):  # every worker has loaded the champion (each answers /healthz in turn)
            r = requests.get(web + "/healthz", timeout=30)
            if r.status_code == 200 and r.headers.get("Content-Type", "").startswith("application/json") \
                    and r.json()["champion"]:
                version = r.json()["champion"]["version"]
                if all(requests.get(web + "/healthz?ready=1", timeout=30).status_code == 200 for _ in range(4)):
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"site not ready: {r.status_code} {r.text[:500]}\n{log.read_text()[-3000:]}")
        # the engine the site serves it on (the public /healthz no longer says): its fast-path tags
        from mlflow import MlflowClient

        tags = MlflowClient(tracking_uri=uri).get_model_version(name, str(version)).tags
        fast = tags.get("fast_path") == "on" and env.get("XRAY_FAST_PATH", "1") != "0"
        engine = f"openvino-{tags.get('fast_path.precision', 'bf16')}" if fast else "openvino-f32"

        # mlflow models serve, same champion, one worker per core, local environment
        ml_port = free_port()
        log = tmp / "mlflow-serve.log"
        procs.append(start([PY, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion",
                            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(ml_port),
                            "--workers", str(args.workers)], env, log))
        ml = f"http://127.0.0.1:{ml_port}"
        wait(ml + "/ping", procs[-1], log)

        stages: dict[str, list[float]] = {}

        def send_web(session, data):
            r = session.post(web + "/api/v1/predict", files={"image": ("xray.jpeg", data, "image/jpeg")},
                             headers={"Authorization": f"Token {token}"}, timeout=120)
            for part in r.headers.get("Server-Timing", "").split(","):  # decode;dur=8.1
                if ";dur=" in part:
                    key, dur = part.strip().split(";dur=")
                    stages.setdefault(key, []).append(float(dur))
            return r.status_code == 200 and "probability" in r.json()

        def send_mlflow(session, data):
            body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(data).decode()]]}}
            r = session.post(ml + "/invocations", json=body, timeout=120)
            return r.status_code == 200 and not r.json()["predictions"][0].get("error")

        for send in (send_web, send_mlflow):  # check, then warm up every worker
            assert send(requests.Session(), images[0]), "a server did not answer correctly"
            measure(send, images, 16, 8)

        if args.tracking_uri:
            splits, _report, cache = training_data.load(args.data, params)
        agreement = candidates.fast_path_report(int(version), splits, params, cache, name)

        n1, n8 = args.requests, 2 * args.requests
        results = {"django": {}, "mlflow": {}}
        server_ms = {}
        for key, conc, n in (("c1", 1, n1), ("c8", 8, n8)):  # interleaved: both see the same machine load
            for label, send in (("django", send_web), ("mlflow", send_mlflow)):
                stages.clear()
                results[label][key] = measure(send, images, n, conc)
                if label == "django":
                    server_ms[key] = {k: round(statistics.median(v), 1) for k, v in stages.items()}
        load = os.getloadavg()
        # USS: what each worker holds alone (its model copies, heaps); RSS also counts shared libraries
        memory_mb = [{"rss": round(m.rss / 2**20), "uss": round(m.uss / 2**20)}
                     for m in (w.memory_full_info() for w in workers if w.is_running())]
        figures = {
            "images": len(images), "image_bytes_mean": int(statistics.mean(len(i) for i in images)),
            "model": f"{name} v{version}", "image_size": params.preprocess.image_size,
            "django_engine": engine, "fast_path": agreement,
            "workers": args.workers, "cpus": os.cpu_count(), "load_average_1m": round(load[0], 2),
            "django_layout": layout, "gunicorn_worker_memory_mb": memory_mb,
            "results": results, "django_server_ms_median": server_ms,
            "ratios": {
                "p50_c1_mlflow_over_django": round(results["mlflow"]["c1"]["p50_ms"] / results["django"]["c1"]["p50_ms"], 2),
                "throughput_c1_django_over_mlflow": round(results["django"]["c1"]["throughput_rps"] / results["mlflow"]["c1"]["throughput_rps"], 2),
                "throughput_c8_django_over_mlflow": round(results["django"]["c8"]["throughput_rps"] / results["mlflow"]["c8"]["throughput_rps"], 2),
            },
        }
        figures["targets"] = {
            "p50_c1_le_15ms": results["django"]["c1"]["p50_ms"] <= 15,
            "throughput_c8_ge_3x_mlflow": figures["ratios"]["throughput_c8_django_over_mlflow"] >= 3,
        }
        print(f"\n{len(images)} full-resolution X-rays (mean {figures['image_bytes_mean'] / 1024:.0f} kB), "
              f"model {figures['model']} at {figures['image_size']} px, {os.cpu_count()} CPUs "
              f"(load average {load[0]:.1f} at the end)")
        print(f"Django: {layout}, batching, "
              f"engine {engine}; mlflow models serve: {args.workers} uvicorn worker(s), torch float32")
        print("gunicorn workers' memory, MB (unique / resident): "
              + ", ".join(f"{m['uss']} / {m['rss']}" for m in memory_mb))
        print(f"fast path ({agreement['precision'] or '-'}) vs float32 reference: "
              f"{'USED' if agreement['ok'] else 'NOT USED'} ({agreement['reason']})")
        for set_name, r in agreement["sets"].items():
            print(f"  {set_name:<9} n={r['n']:<6} labels agree {r['label_agreement']:.2%}, gate agrees "
                  f"{r.get('gate_agreement', float('nan')):.2%}, AUC {r.get('auc_reference', float('nan')):.4f} "
                  f"-> {r.get('auc_fast', float('nan')):.4f} (delta {r.get('auc_delta', float('nan')):.4f}), "
                  f"ECE {r.get('ece_reference', float('nan')):.4f} -> {r.get('ece_fast', float('nan')):.4f}, "
                  f"max |dP| {r['max_abs_probability_diff']:.4f}")
        print(f"{'server':<28}{'conc':>5}{'n':>6}{'err':>5}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>8}")
        for label, title in (("django", "Django /api/v1/predict"), ("mlflow", "mlflow models serve")):
            for c in ("c1", "c8"):
                r = results[label][c]
                print(f"{title:<28}{c[1:]:>5}{r['requests']:>6}{r['errors']:>5}{r['p50_ms']:>9}{r['p95_ms']:>9}"
                      f"{r['throughput_rps']:>8}")
        for key, ms in server_ms.items():
            print(f"Django server-side median ms at concurrency {key[1:]}: "
                  + ", ".join(f"{k} {v}" for k, v in ms.items()))
        for key, value in figures["ratios"].items():
            print(f"{key:<36}{value:>6}x")
        for key, value in figures["targets"].items():
            print(f"target {key:<29}{'met' if value else 'MISSED':>7}")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
        return 0
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
