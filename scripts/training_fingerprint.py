"""Fingerprint of one seeded training run: the check that a refactoring changed no behaviour.

    python scripts/training_fingerprint.py OUT_DIR [--set key=value ...]

Trains through the CLI (`python -m pipeline train`, a stable interface across refactorings) on a
small seeded subset, then prints a JSON digest of what the run produced: the SHA-256 of every
weight tensor, the threshold, the calibration and the gate's fitted limits. Two runs of the same
code give the same digest; so must the code before and after a change that claims to change no
behaviour (docs/architecture.md).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch

QUICK = ["data.subset_per_class=60", "train.epochs=2", "preprocess.image_size=96",
         "evaluate.stress_images=40", "gate.max_fit_images=120", "gate.distance_margin=1.5"]


def digest(checkpoint: Path) -> dict:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    weights = hashlib.sha256()
    for key, tensor in sorted(ckpt["state_dict"].items()):
        weights.update(key.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    gate = ckpt.get("gate") or {}
    limits = {k: v for k, v in gate.items() if isinstance(v, (int, float))}
    limits.update({f"{k}.{key}": v for k, part in gate.items() if isinstance(part, dict)
                   for key, v in part.items() if isinstance(v, (int, float))})
    return {"weights_sha256": weights.hexdigest(), "threshold": ckpt.get("threshold"),
            "calibration": ckpt.get("calibration"), "gate_limits": limits,
            "gate_sha256": hashlib.sha256(json.dumps(gate, sort_keys=True).encode()).hexdigest()}


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    sets = [a for pair in zip(["--set"] * len(QUICK), QUICK) for a in pair] + argv[1:]
    subprocess.run([sys.executable, "-m", "pipeline", "train", "--out", str(out), "--no-progress", *sets],
                   check=True, stdout=sys.stderr)
    print(json.dumps(digest(out / "model.pt"), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
