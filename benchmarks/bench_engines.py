"""The network's forward pass on each engine the site can use, against float32 PyTorch eager.

    .venv/bin/python benchmarks/bench_engines.py [--checkpoint model.pt] [--data ../shared/datasets/chest_xray]

Engines: PyTorch float32 eager (the reference, the baseline), and the version's ONNX file in
OpenVINO at float32, bfloat16 (where the CPU has it) and its int8 copy (pipeline.inference.onnx_export
.quantize, calibrated on training X-rays of --data). Latency per call at batch 1 and 8 (median
of --repeat calls after a warm-up), on all cores, and each engine's speed-up over the baseline.
Speed does not depend on the weights: without --checkpoint an untrained network is measured.
Whether a precision may answer doctors is the fast-path check's business (bench_web.py prints it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pipeline.settings import config
from pipeline.inference import engine, onnx_export
from pipeline.model import artifacts
from pipeline.data import preprocess
from pipeline.model.network import build_model
from pipeline.inference.predict import Predictor

REPO = Path(__file__).resolve().parent.parent


def median_ms(fn, repeat: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="model.pt (default: an untrained network)")
    ap.add_argument("--data", type=Path, default=Path(os.environ.get(
        "DATA", REPO.parent / "shared" / "datasets" / "chest_xray")), help="training X-rays for the int8 ranges")
    ap.add_argument("--repeat", type=int, default=40)
    args = ap.parse_args()

    params = config.load_params()
    if args.checkpoint:
        predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    else:
        predictor = Predictor(build_model("scratch"), params.preprocess.image_size, 0.5, device="cpu",
                              intensity=params.preprocess.intensity)
    size = predictor.image_size
    calibration = preprocess.load_spread(sorted((args.data / "train").rglob("*.jpeg")), size,
                                         onnx_export.CALIBRATION_IMAGES)
    images = calibration[:8]
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        f32 = onnx_export.export(predictor, Path(tmp) / artifacts.ONNX_FILE)
        int8 = onnx_export.quantize(f32, calibration, predictor.intensity, Path(tmp) / artifacts.ONNX_INT8_FILE)
        engines = {"torch float32 (baseline)": predictor.forward,
                   "OpenVINO f32": engine.FastEngine(f32, predictor.intensity, "f32").forward}
        if engine.cpu_has_bf16():
            engines["OpenVINO bf16"] = engine.FastEngine(f32, predictor.intensity, "bf16").forward
        engines["OpenVINO int8"] = engine.FastEngine(int8, predictor.intensity, "int8").forward
        print(f"{size} px ResNet18, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
              f"int8 calibrated on {len(calibration)} training X-rays; median of {args.repeat} calls")
        print(f"{'engine':<26}{'batch 1 ms':>11}{'batch 8 ms':>11}{'speed-up (1 / 8)':>19}")
        base = None
        for name, forward in engines.items():
            ms = [median_ms(lambda n=n: forward(images[:n]), args.repeat) for n in (1, 8)]
            base = base or ms
            print(f"{name:<26}{ms[0]:>11.2f}{ms[1]:>11.2f}{base[0] / ms[0]:>10.2f}x /{base[1] / ms[1]:>5.2f}x")


if __name__ == "__main__":
    main()
