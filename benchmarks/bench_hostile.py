"""Time and peak memory of each hostile upload through the live site, against one real X-ray.

    .venv/bin/python benchmarks/bench_hostile.py                  # a throw-away site (untrained model)
    .venv/bin/python benchmarks/bench_hostile.py --url http://127.0.0.1:8000 --token KEY [--pid PID]

The files are issue 25's table, built by tests/hostile_files.py. Each is POSTed to /api/predict;
the peak resident memory (VmHWM) of the site's process tree (gunicorn master, workers and their
decoder processes; --pid: the gunicorn master of a running site, found by its port otherwise) is
reset before and read after each request. Baseline: the same figures for a real full-resolution
X-ray, so each row prints its ratio to an ordinary upload. Goal (issue 25): a 4xx with a reason,
< 2 s and < +200 MiB each, and the site still answering.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
from tests.hostile_files import PeakMemory, hostile  # noqa: E402


def send(url: str, token: str, root: int | None, name: str, blob: bytes) -> tuple[int, float, float, str]:
    with PeakMemory(root or 0) as mem:
        started = time.perf_counter()
        r = requests.post(url + "/api/predict", files={"image": (name, blob)},
                          headers={"Authorization": f"Token {token}"}, timeout=120)
        seconds = time.perf_counter() - started
    detail = r.json().get("detail", "") if r.headers.get("content-type", "").startswith("application/json") else r.text
    return r.status_code, seconds, mem.mib if root else float("nan"), detail


def gunicorn_master(url: str) -> int | None:
    port = url.rsplit(":", 1)[-1].strip("/")
    out = subprocess.run(["pgrep", "-of", f"gunicorn.*{port}"], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.stdout.strip() else None


def own_site(tmp: Path):
    """A throw-away MLflow server and site (as bench_web.py starts them), untrained champion."""
    import os

    import bench_web as bw

    from pipeline.settings import config
    from pipeline.mlops import aliases, tracking

    params = config.load_params()
    port, web_port = bw.free_port(), bw.free_port()
    env = {**os.environ, "PATH": f"{Path(bw.PY).parent}:{os.environ.get('PATH', '')}"}
    procs = [bw.start([bw.PY, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                       "--artifacts-destination", str(tmp / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
                       "--port", str(port), "--workers", "1"], env, tmp / "mlflow.log")]
    uri = f"http://127.0.0.1:{port}"
    bw.wait(uri + "/health", procs[0], tmp / "mlflow.log")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    reg = config.apply_overrides(params, {"registry.model_name": bw.MODEL_NAME, "registry.experiment": "bench-hostile"})
    ckpt = bw.untrained_checkpoint(tmp / "model.pt", params.preprocess.image_size)
    version = tracking.register_checkpoint(ckpt, reg, tags={"trigger": "bench"})["version"]
    aliases.promote(version, name=bw.MODEL_NAME, force=True)
    web_env = {k: v for k, v in env.items() if not k.startswith("DJANGO_") and k != "DATABASE_URL"}
    web_env.update({"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "bench-" + "x" * 50, "MLFLOW_TRACKING_URI": uri,
                    "XRAY_MODEL_NAME": bw.MODEL_NAME, "XRAY_WEB_DATA_DIR": str(tmp / "web"),
                    "WEB_BIND": f"127.0.0.1:{web_port}", "WEB_ACCESS_LOG": "", "PYTHON": bw.PY,
                    "XRAY_UPLOADS_PER_MINUTE": "1000000", "XRAY_TOKEN_UPLOADS_PER_MINUTE": "1000000"})
    procs.append(bw.start(["bash", str(REPO / "scripts" / "web_server.sh")], web_env, tmp / "web.log"))
    url = f"http://127.0.0.1:{web_port}"
    bw.wait(url + "/healthz?ready=1", procs[1], tmp / "web.log")
    out = subprocess.run([bw.PY, "manage.py", "create_doctor", "bench", "--password", "bench-hostile-pass-123",
                          "--token"], cwd=REPO / "django_app", env=web_env, capture_output=True, text=True, check=True)
    token = re.search(r"API token \(shown once\): (\S+)", out.stdout).group(1)
    return url, token, procs[1].pid, procs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url")
    ap.add_argument("--token")
    ap.add_argument("--pid", type=int, help="gunicorn master of the site (default: found by the URL's port)")
    ap.add_argument("--xray", type=Path, default=REPO.parent / "shared" / "datasets" / "fullres_samples")
    args = ap.parse_args()
    real = sorted(p for p in args.xray.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))[0].read_bytes()
    procs = []
    if args.url:
        url, token, root = args.url.rstrip("/"), args.token, args.pid or gunicorn_master(args.url)
    else:
        import bench_web as bw

        url, token, root, procs = own_site(Path(tempfile.mkdtemp(prefix="bench-hostile-")))
    try:
        send(url, token, root, "xray.jpeg", real)  # warm: model and decoders loaded
        status, base_s, base_mib, _ = send(url, token, root, "xray.jpeg", real)
        print(f"baseline, a real X-ray ({len(real) / 1024:.0f} KB): HTTP {status}, {base_s * 1000:.0f} ms, "
              f"+{base_mib:.0f} MiB peak over the site's processes")
        print(f"{'file':45s} {'size':>9s} {'HTTP':>4s} {'ms':>7s} {'x real':>7s} {'MiB':>6s}  reason")
        ok = True
        for name, (filename, blob, _) in hostile().items():
            status, seconds, mib, detail = send(url, token, root, filename, blob)
            ok &= 400 <= status < 500 and seconds < 2 and not mib > 200
            print(f"{name:45s} {len(blob) / 1024:7.0f}KB {status:4d} {seconds * 1000:7.0f} {seconds / base_s:6.1f}x "
                  f"{mib:6.0f}  {detail[:70]}")
        status, _, _, _ = send(url, token, root, "xray.jpeg", real)
        print(f"afterwards, the real X-ray again: HTTP {status}")
        print("goal (4xx, < 2 s, < +200 MiB each; site answering):", "MET" if ok and status == 200 else "NOT MET")
        return 0 if ok and status == 200 else 1
    finally:
        if procs:
            import bench_web as bw

            for p in reversed(procs):
                bw.stop(p)


if __name__ == "__main__":
    sys.exit(main())
