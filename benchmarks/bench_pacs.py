"""The PACS gateway's throughput and latency: studies per minute, and the time from store to SR.

    .venv/bin/python benchmarks/bench_pacs.py [--studies 20] [--workers 1,2] [--checkpoint model.pt] [--json out.json]

What it does
1. Starts a throw-away MLflow server and registers the champion (--checkpoint, or an untrained
   ResNet18 at params.yaml's image size: the time does not depend on the weights).
2. For each worker count: a fresh Orthanc (Debian's package, tests/web/pacsutil.py), a fresh site
   database, N `manage.py pacs_worker` processes; one warm-up study per worker (model loaded).
3. Sends --studies studies (one real film each, fullres_samples wrapped into DX DICOM) by STOW-RS,
   one after the other, and polls QIDO-RS until each study holds its SR.
Prints studies per minute (first store to last SR) and store-to-SR p50 / p95.
Targets (issue 24): p50 <= 30 s (stretch 10 s) with 20 studies sent at once.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "web"))  # the Orthanc harness and DICOM builder of the tests
from pacsutil import Orthanc, film_dicom, free_port, sr_count, start_worker, stop_worker, stow  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_web import start, stop, untrained_checkpoint, wait  # noqa: E402

PY = sys.executable


def champion(tmp: Path, checkpoint: Path | None) -> tuple[subprocess.Popen, str, str]:
    from pipeline.mlops import aliases, tracking
    from pipeline.settings import config

    port, name = free_port(), "bench-pacs-xray"
    uri = f"http://127.0.0.1:{port}"
    proc = start([PY, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                  "--artifacts-destination", str(tmp / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
                  "--port", str(port), "--workers", "1"], dict(os.environ), tmp / "mlflow.log")
    wait(uri + "/health", proc, tmp / "mlflow.log")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    params = config.load_params()
    ckpt = checkpoint or untrained_checkpoint(tmp / "model.pt", params.preprocess.image_size)
    reg = config.apply_overrides(params, {"registry.model_name": name, "registry.experiment": "bench-pacs"})
    version = tracking.register_checkpoint(ckpt, reg, tags={"trigger": "bench"})["version"]
    aliases.promote(version, name=name, force=True)
    return proc, uri, name


def until_sr(orthanc: Orthanc, study_uids: list[str], timeout: float) -> dict[str, float]:
    seen, deadline = {}, time.time() + timeout
    while len(seen) < len(study_uids) and time.time() < deadline:
        for uid in study_uids:
            if uid not in seen and sr_count(orthanc, uid)[0]:
                seen[uid] = time.time()
        time.sleep(0.2)
    return seen


def run(n_workers: int, studies: int, films: list[Path], tmp: Path, env: dict) -> dict:
    orthanc = Orthanc(tmp / f"orthanc-{n_workers}").start()
    wenv = {**env, **orthanc.env(), "XRAY_WEB_DATA_DIR": str(tmp / f"site-{n_workers}"),
            "XRAY_PACS_POLL_SECONDS": "0.2", "DJANGO_ENV": "development", "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "bench-" + "k" * 50}
    subprocess.run([PY, "manage.py", "migrate", "--noinput"], cwd=REPO / "django_app", env=wenv, check=True,
                   capture_output=True)
    workers = [start_worker(wenv, tmp / f"worker-{n_workers}-{i}.log") for i in range(n_workers)]
    try:
        warm = [film_dicom(films[i % len(films)], patient_id=f"W{i}") for i in range(n_workers)]
        stow(orthanc, warm)
        if len(until_sr(orthanc, [d.StudyInstanceUID for d in warm], 240)) < n_workers:
            raise RuntimeError(f"warm-up failed: see {tmp}/worker-*.log")
        batch = [film_dicom(films[i % len(films)], patient_id=f"S{i}") for i in range(studies)]
        sent = {}
        for ds in batch:
            stow(orthanc, [ds])
            sent[ds.StudyInstanceUID] = time.time()
        seen = until_sr(orthanc, list(sent), 600)
    finally:
        for w in workers:
            stop_worker(w)
        orthanc.stop()
    latencies = sorted(seen[u] - sent[u] for u in seen)
    span = max(seen.values()) - min(sent.values())
    return {"workers": n_workers, "studies": studies, "answered": len(seen),
            "studies_per_minute": round(len(seen) / span * 60, 1),
            "p50_s": round(statistics.median(latencies), 2),
            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--films", type=Path, default=REPO.parent / "shared" / "datasets" / "fullres_samples")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    os.environ.setdefault("XRAY_MODEL_CACHE_DIR", str(tmp / "model-cache"))
    films = sorted(args.films.glob("*/*.jpeg"))
    mlflow, uri, name = champion(tmp, args.checkpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_") and k != "DATABASE_URL"}
    env.update({"MLFLOW_TRACKING_URI": uri, "XRAY_MODEL_NAME": name})
    try:
        results = [run(int(n), args.studies, films, tmp, env) for n in args.workers.split(",")]
    finally:
        stop(mlflow)
    print(f"\nPACS gateway, {os.cpu_count()} CPUs, {args.studies} studies sent by STOW-RS back to back")
    print(f"{'workers':>8} {'answered':>9} {'studies/min':>12} {'store->SR p50':>14} {'p95':>7}")
    for r in results:
        print(f"{r['workers']:>8} {r['answered']:>9} {r['studies_per_minute']:>12} {r['p50_s']:>13}s {r['p95_s']:>6}s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
