"""The site's inference engine: a version's own ONNX file compiled by OpenVINO (no torch).

It runs the int8 copy, or the float32 file in bfloat16 where the CPU has it (AVX-512 BF16 / AMX),
float32 otherwise. Measured on 2 cores of a Xeon with AMX (benchmarks/bench_engines.py): a 160 px
ResNet18 forward pass of eight images takes 62 ms in PyTorch float32, 11 ms in OpenVINO bf16 and
7.2 ms in int8; one image 11.8, 3.0 and 2.1 ms. Whether a version may answer doctors through it is
decided by pipeline.evaluation.fastpath; the float32 PyTorch network stays the reference.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from pipeline.data import preprocess
from pipeline.inference import concurrency


def cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class FastEngine:
    """An ONNX file compiled by OpenVINO; `forward` has `Predictor.forward`'s contract.
    precision: "int8" for the int8 copy (its other operators in bf16 where the CPU has it),
    "bf16" or "f32" for the float32 file; None: bf16 where the CPU has it, else f32.
    threads: the cores a forward pass runs on (0: OpenVINO's choice, every core); with fewer than
    the machine has, a lone image while no other answer is being computed runs on all of them
    (pipeline.inference.concurrency says why), on a second compiled copy made on first use."""

    def __init__(self, onnx_path: str | Path, intensity: str, precision: str | None = None, threads: int = 0):
        import openvino as ov

        core = ov.Core()
        native = "bf16" if cpu_has_bf16() else "f32"
        self.precision = precision or native
        config = {"INFERENCE_PRECISION_HINT": native if self.precision == "int8" else self.precision,
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        model = core.read_model(str(onnx_path))
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        cores = len(os.sched_getaffinity(0))
        self.spread = 0 < threads < cores   # False: always on `threads` (the shadow's challenger)
        self._all_cores = lambda: core.compile_model(model, "CPU", {**config, "INFERENCE_NUM_THREADS": cores})
        self._wide_request = None
        self.intensity = intensity
        # files exported before the class activation map was an output have two outputs
        self.has_cam = any("cam" in out.get_names() for out in self.compiled.outputs)
        self._lock = threading.Lock()  # one infer request: one call at a time

    def stay_on_share(self) -> None:
        """Never spread over every core (a background model: the shadow's challenger)."""
        self.spread, self._wide_request = False, None

    def _infer(self, arrays: np.ndarray) -> list[np.ndarray]:
        x = preprocess.model_input_arrays(arrays, self.intensity)
        with self._lock:
            request = self.request
            if self.spread and len(x) == 1 and concurrency.alone():
                if self._wide_request is None:
                    self._wide_request = self._all_cores().create_infer_request()
                request = self._wide_request
            out = request.infer({0: x})
            return [np.array(out[i]) for i in range(len(self.compiled.outputs))]

    def forward(self, arrays: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [N, S, S] -> (logits float64 [N], pooled features float32 [N, 512])."""
        logits, feats = [], []
        for i in range(0, len(arrays), batch_size):
            out = self._infer(arrays[i:i + batch_size])
            logits.append(out[0].astype(np.float64).reshape(-1))
            feats.append(out[1].astype(np.float32))
        if not logits:
            return np.zeros(0, np.float64), np.zeros((0, 0), np.float32)
        return np.concatenate(logits), np.concatenate(feats)

    def activation_map(self, arr: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """One uint8 [S, S] image -> (logit, pooled features [1, 512], class activation map [s, s])."""
        logit, feats, cam = self._infer(arr[None])
        return float(logit.reshape(-1)[0]), feats.astype(np.float32), cam[0].astype(np.float32)
