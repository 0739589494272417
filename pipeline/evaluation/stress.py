"""The stress evaluation: the same patients under every controlled acquisition shift (`shift.py`).

`build` re-encodes a seeded sample of a split's images under each shift and decodes the bytes
through the one preprocessing path, exactly as uploads are; the arrays are cached on disk, so the
champion and the challenger (and the next day's run on the same data) score identical inputs.
`report` turns per-shift probabilities into the figures promotion and the model card use: AUC,
sensitivity and specificity at the stored threshold, calibration, per shift and the worst case.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import timing
from pipeline.model import calibration
from pipeline.settings import config
from pipeline.evaluation import evaluate, shift
from pipeline.data import preprocess
from pipeline.data.cache import CACHE_VERSION

VERSION = 1  # bump when shift.py or the stress recipe changes: cached stress sets are rebuilt


@dataclass
class StressSet:
    keys: list[str]                 # image identity (content digest), the pairing key across models
    labels: np.ndarray              # [n] 0 NORMAL, 1 PNEUMONIA
    arrays: dict[str, np.ndarray]   # shift name -> uint8 [n, S, S] model-ready pixels

    @property
    def names(self) -> list[str]:
        return list(self.arrays)


def pick(samples, n: int, seed: int) -> list:
    """A seeded, class-stratified sample of at most n images (all of them when n <= 0)."""
    if n <= 0 or len(samples) <= n:
        return list(samples)
    rng = np.random.default_rng(seed)
    out = []
    for label in sorted({s.label for s in samples}):
        group = sorted((s for s in samples if s.label == label), key=lambda s: s.digest)
        k = round(n * len(group) / len(samples))
        out += [group[i] for i in sorted(rng.choice(len(group), size=min(k, len(group)), replace=False))]
    return out


def _source_pixels(path: Path, max_side: int) -> np.ndarray:
    img = preprocess.load_image(path)
    if max(img.size) > max_side:  # full-resolution films: the shifts act at a size the model still resolves
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return np.asarray(img, np.uint8)


def build(samples, image_size: int, seed: int = 0, families: list[str] | None = None,
          source_max_side: int = 512, cache_dir: Path | None = None) -> StressSet:
    """Every shift of `samples` (already picked) at the model's input size, cached on disk."""
    shifts = shift.stress_shifts(families or None)
    keys = [s.digest for s in samples]
    labels = np.array([s.label for s in samples], np.int64)
    ident = json.dumps([VERSION, preprocess_version(), image_size, seed, source_max_side,
                        [x.name for x in shifts], keys])
    path = (cache_dir or config.cache_dir() / "stress") / f"{hashlib.sha256(ident.encode()).hexdigest()[:20]}.npz"
    if path.exists():
        with timing.step("stress set (cached)"), np.load(path) as f:
            return StressSet(keys, labels, {x.name: f[x.name] for x in shifts})
    with timing.step("stress set (built)"):
        arrays = {x.name: np.empty((len(samples), image_size, image_size), np.uint8) for x in shifts}

        def one(i: int) -> None:   # every shift of one image (each seeded by the image: order-free)
            pixels = _source_pixels(samples[i].path, source_max_side)
            for x in shifts:
                arrays[x.name][i] = preprocess.load_array(x.apply(pixels, seed, samples[i].digest), image_size)

        # PIL's codecs and numpy release the GIL: one thread per core halves the build on 2 cores
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(one, range(len(samples))))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return StressSet(keys, labels, arrays)


def preprocess_version() -> int:
    return CACHE_VERSION


def logits(predictor, stress: StressSet, batch_size: int = 64) -> dict[str, np.ndarray]:
    return {name: predictor.logits(arr, batch_size) for name, arr in stress.arrays.items()}


def report(labels: np.ndarray, probs: dict[str, np.ndarray], threshold: float) -> dict:
    """Per-shift figures at `threshold`, the worst case of each, and the mean AUC over shifts."""
    per_shift = {}
    for name, p in probs.items():
        m = evaluate.compute_metrics(labels, p, threshold)
        per_shift[name] = {"auc": m["auc"], "sensitivity": m["sensitivity"], "specificity": m["specificity"],
                           "ece": calibration.ece(labels, p), "brier": calibration.brier(labels, p)}
    out: dict = {"n": int(len(labels)), "shifts": len(per_shift),
                 "mean_auc": float(np.mean([m["auc"] for m in per_shift.values()])),
                 "mean_ece": float(np.mean([m["ece"] for m in per_shift.values()]))}
    for key in ("auc", "sensitivity", "specificity"):
        worst = min(per_shift, key=lambda n: per_shift[n][key])
        out[f"worst_{key}"], out[f"worst_{key}_shift"] = per_shift[worst][key], worst
    pooled_y = np.concatenate([labels] * len(probs))
    pooled_p = np.concatenate(list(probs.values()))
    out["pooled_sensitivity"] = evaluate.compute_metrics(pooled_y, pooled_p, threshold)["sensitivity"]
    out["pooled_specificity"] = evaluate.compute_metrics(pooled_y, pooled_p, threshold)["specificity"]
    out["per_shift"] = per_shift
    return out


def format_table(rep: dict) -> str:
    """The per-shift table that `python -m pipeline evaluate` and the benchmark print."""
    lines = [f"{'shift':<22}{'AUC':>8}{'sens':>8}{'spec':>8}{'ECE':>8}"]
    for name, m in rep["per_shift"].items():
        lines.append(f"{name:<22}{m['auc']:>8.4f}{m['sensitivity']:>8.3f}{m['specificity']:>8.3f}{m['ece']:>8.3f}")
    lines.append(f"{'worst':<22}{rep['worst_auc']:>8.4f}{rep['worst_sensitivity']:>8.3f}"
                 f"{rep['worst_specificity']:>8.3f}   (AUC: {rep['worst_auc_shift']}, sens: "
                 f"{rep['worst_sensitivity_shift']}, spec: {rep['worst_specificity_shift']})")
    lines.append(f"{'mean AUC over shifts':<22}{rep['mean_auc']:>8.4f}")
    return "\n".join(lines)
