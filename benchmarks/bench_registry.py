"""What MLflow costs the platform: logging + registering a run, and loading the champion.

    .venv/bin/python benchmarks/bench_registry.py [--uri http://...] [--repeats 3] [--per-class 60]

Without --uri a throw-away server is started with scripts/mlflow_server.sh (SQLite + local
artifacts in a temp dir). The model is the real ResNet18 (11.2 M parameters, ~45 MB checkpoint:
its size does not depend on the image size), trained for one tiny epoch so the benchmark takes
about a minute on 2 cores.

Measured, each against a named baseline (ratios printed):
1. tracking overhead of one training run = tracked_train() wall time minus the train() call inside
   it (server check, params, per-epoch metrics, tags, dataset input, artifacts, pyfunc + input
   example validation, registration, alias); baseline: train() alone on the same data and seed;
2. log + register of an existing checkpoint (register_checkpoint: params, pyfunc with code and
   input example, registered version, alias), seconds per run;
3. cold load from the registry in a fresh process with an empty model cache: alias lookup +
   download + Predictor (baseline: Predictor.from_checkpoint on the local model.pt in that process);
   warm load (cache filled) in the same process; mlflow.pyfunc.load_model by alias, cold.
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

COLD_LOAD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import mlflow.pyfunc, torch
from pipeline.mlops import aliases, loading
from pipeline.inference.predict import Predictor
t_import = time.perf_counter() - t0
t = time.perf_counter(); Predictor.from_checkpoint(sys.argv[1], device="cpu"); local = time.perf_counter() - t
t = time.perf_counter(); p, mv = loading.load_champion(device="cpu"); cold = time.perf_counter() - t
t = time.perf_counter(); loading.load_champion(device="cpu"); warm = time.perf_counter() - t
t = time.perf_counter(); mlflow.pyfunc.load_model(f"models:/{mv.name}@champion"); pyfunc = time.perf_counter() - t
print(json.dumps({"import_s": t_import, "local_ms": local * 1e3, "cold_ms": cold * 1e3, "warm_ms": warm * 1e3,
                  "pyfunc_cold_ms": pyfunc * 1e3}))
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path) -> tuple[dict, str]:
    port = free_port()
    env = {**os.environ, "MLFLOW_DIR": str(workdir), "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "2"}
    env.pop("MLFLOW_BACKEND_STORE_URI", None)
    env.pop("MLFLOW_ARTIFACTS_DESTINATION", None)
    subprocess.run([str(REPO / "scripts" / "mlflow_server.sh"), "--background"], env=env, check=True)
    return env, f"http://127.0.0.1:{port}"


def make_subset(dest: Path, source: Path, per_class: int, seed: int = 0) -> Path:
    from pipeline.data import dataset

    dataset.link_subset(source, dest, per_class, seed)
    return dest


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uri", help="use this tracking server instead of starting one")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get(
        "SHARED_DATASETS", REPO.parent / "shared" / "datasets")) / "chest_xray" / "train")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    os.environ.setdefault("XRAY_CACHE_DIR", str(tmp / "cache"))
    os.environ["XRAY_MODEL_CACHE_DIR"] = str(tmp / "models")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ["XRAY_MODEL_NAME"] = "bench-registry"
    server_env = None
    if args.uri:
        uri = args.uri
    else:
        server_env, uri = start_server(tmp / "mlflow")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        from pipeline.settings import config
        from pipeline.mlops import aliases, tracking
        from pipeline.training.train import train

        params = config.apply_overrides(config.load_params(), {
            "preprocess.image_size": 64, "train.epochs": 1, "train.batch_size": 16, "train.warmup_epochs": 0,
            "train.patience": 1, "data.min_side": 32})
        data_root = make_subset(tmp / "data", args.data, args.per_class)

        train(params, data_root, tmp / "warmup", progress=False)        # fills the preprocessing cache
        t = time.perf_counter()
        plain = train(params, data_root, tmp / "plain", progress=False)
        t_plain = time.perf_counter() - t
        t = time.perf_counter()
        tracked = tracking.tracked_train(params, data_root, tmp / "tracked", tags={"trigger": "benchmark"})
        t_tracked = time.perf_counter() - t
        overhead = tracked["seconds"]["tracking"]       # measured inside: everything but train()

        register_s = []
        for i in range(args.repeats):
            t = time.perf_counter()
            tracking.register_checkpoint(plain.checkpoint, params, run_name=f"bench-register-{i}",
                                         data_root=data_root)
            register_s.append(time.perf_counter() - t)
        aliases.promote(tracked["version"], {"reason": "benchmark"}, force=True)

        loads = []
        for i in range(args.repeats):
            env = {**os.environ, "XRAY_MODEL_CACHE_DIR": str(tmp / f"cold-cache-{i}")}
            out = subprocess.run([sys.executable, "-c", COLD_LOAD, str(plain.checkpoint)], env=env,
                                 capture_output=True, text=True, check=True)
            loads.append(json.loads(out.stdout.strip().splitlines()[-1]))
        size_mb = Path(plain.checkpoint).stat().st_size / 2**20

        col = {k: [d[k] for d in loads] for k in loads[0]}
        print(f"\nMLflow registry benchmark  ({os.cpu_count()} cores, server {uri}, "
              f"checkpoint {size_mb:.1f} MB, {args.repeats} repeats)")
        print(f"1. training run, 1 epoch on {2 * args.per_class} images at 64 px")
        print(f"   train() alone (baseline)          {t_plain:7.2f} s")
        print(f"   tracked_train()                   {t_tracked:7.2f} s")
        print(f"   of which train() inside it        {tracked['seconds']['train']:7.2f} s")
        print(f"   tracking + registration overhead  {overhead:7.2f} s   "
              f"(= {overhead / t_plain:.2f} x the plain tiny run; a real 14-epoch run takes ~1000x longer)")
        print(f"2. log + register an existing checkpoint: {fmt(register_s)} s per run")
        print("3. model load, fresh process, empty cache (ms, median of repeats)")
        print(f"   Predictor.from_checkpoint, local file (baseline)  {statistics.median(col['local_ms']):8.0f}")
        print(f"   load_champion() cold: alias + download + Predictor {statistics.median(col['cold_ms']):8.0f}"
              f"   (x{statistics.median(col['cold_ms']) / statistics.median(col['local_ms']):.1f} baseline)")
        print(f"   load_champion() warm (cache hit)                   {statistics.median(col['warm_ms']):8.0f}")
        print(f"   mlflow.pyfunc.load_model('models:/..@champion')    {statistics.median(col['pyfunc_cold_ms']):8.0f}")
        print(f"   (imports of torch + mlflow + pipeline in that process: {statistics.median(col['import_s']):.1f} s)")
        print(json.dumps({"train_s": t_plain, "tracked_train_s": t_tracked, "overhead_s": overhead,
                          "register_s": register_s, "loads": loads, "checkpoint_mb": size_mb}))
    finally:
        if server_env is not None:
            subprocess.run([str(REPO / "scripts" / "mlflow_server.sh"), "--stop"], env=server_env)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
