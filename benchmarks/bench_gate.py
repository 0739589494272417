"""The input gate (pipeline.inference.gate): its cost per request, and what it refuses.

    python benchmarks/bench_gate.py --model runs/<run>/model.pt [--data ../shared/datasets/chest_xray]

1. cost: full-resolution uploads (../shared/datasets/fullres_samples) answered by inference.answer
   with the gate vs the same steps without it (decode + resize + forward pass), median of --repeat;
2. false refusals: every held-out (test split) X-ray of the model's own patient split of --data,
   the 80 full-resolution samples (the 10 RGB-encoded ones counted apart) and --data's own val/
   folder when it has one;
3. foreign inputs (tests/foreign_inputs.py): how many of each class are refused;
4. grey scene photographs shipped by scikit-image, matplotlib and scikit-learn
   (`foreign_inputs.scene_photos`): refused per half (tuning / held-out / fresh), by the whole gate
   and by the network-free checks alone (layout, layout + texture).
--no-texture judges the same checkpoint as if its gate had no texture check (the "before").
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

print = functools.partial(print, flush=True)  # noqa: A001 - progress shows in logs while it runs
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' foreign inputs

from pipeline.settings import config  # noqa: E402
from pipeline.data import preprocess
from pipeline.data import training_data
from pipeline.inference import gate
from pipeline.inference.predict import Predictor  # noqa: E402
from pipeline.inference.answer import answer_file


def refused(predictor: Predictor, blob) -> str | None:
    try:
        answer_file(blob, predictor)
    except gate.NotAChestXray as exc:
        return exc.reason
    return None


def cost(predictor: Predictor, files: list[Path], repeat: int) -> dict:
    blobs = [f.read_bytes() for f in files]

    def ungated(blob):
        predictor.probabilities(preprocess.load_array(blob, predictor.image_size)[None])

    def gated(blob):
        answer_file(blob, predictor)

    for blob in blobs[:3]:  # warm-up
        ungated(blob), gated(blob)
    times = {"without_gate_ms": [], "with_gate_ms": []}
    for _ in range(repeat):
        for blob in blobs:  # interleaved, so load changes hit both sides alike
            for key, fn in (("without_gate_ms", ungated), ("with_gate_ms", gated)):
                t = time.perf_counter()
                try:
                    fn(blob)
                except gate.NotAChestXray:
                    pass
                times[key].append((time.perf_counter() - t) * 1000)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["gate_ms"] = out["with_gate_ms"] - out["without_gate_ms"]
    out["gate_share_of_request"] = out["gate_ms"] / out["with_gate_ms"]
    feats = np.zeros((1, 512), np.float32)
    arr = preprocess.load_array(blobs[0], predictor.image_size)
    t = time.perf_counter()
    for _ in range(200):
        try:
            predictor.gate.assess(arr, feats)
        except gate.NotAChestXray:
            pass
    out["assess_ms"] = (time.perf_counter() - t) * 1000 / 200
    t = time.perf_counter()
    for _ in range(200):
        predictor.gate.texture_score(arr[None])
    out["texture_ms"] = (time.perf_counter() - t) * 1000 / 200
    t = time.perf_counter()
    for blob in blobs:
        gate.check_file(blob)
    out["check_file_ms"] = (time.perf_counter() - t) * 1000 / len(blobs)
    return out


def scenes(predictor: Predictor) -> dict:
    """Grey scene photographs refused, per half, by the gate and by its network-free checks."""
    from foreign_inputs import FRESH, HELD_OUT, TUNING, scene_photos

    g = predictor.gate
    out = {}
    for half, names in (("tuning", TUNING), ("held_out", HELD_OUT), ("fresh", FRESH)):
        photos, arrays, answered = scene_photos(names), [], []
        for name, (_, blob) in photos.items():
            try:
                arrays.append(preprocess.load_array(blob, predictor.image_size))
            except preprocess.InvalidImage:  # under the 64 px minimum: refused before the gate
                continue
            if not refused(predictor, blob):
                answered.append(name)
        x = np.stack(arrays)
        layout = g.layout_residual(x) > g.max_layout
        texture = g.texture_score(x) > g.max_texture
        out[half] = {"n": len(x), "refused": len(x) - len(answered), "answered": answered,
                     "layout_alone": int(layout.sum()), "layout_or_texture": int((layout | texture).sum())}
        print(f"grey scene photos, {half}: {len(x) - len(answered)}/{len(x)} refused "
              f"(network-free: layout {layout.sum()}, layout or texture {(layout | texture).sum()})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model.pt with a fitted gate")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "chest_xray")
    ap.add_argument("--fullres", type=Path, default=REPO.parent / "shared" / "datasets" / "fullres_samples")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-heldout", action="store_true")
    ap.add_argument("--no-texture", action="store_true", help="switch the texture check off (before)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    predictor = Predictor.from_checkpoint(args.model, device="cpu")
    if args.no_texture:
        predictor.gate.texture_center = None
    print(f"gate: {predictor.gate.description}")
    report: dict = {"model": str(args.model), "gate": predictor.gate.description}

    fullres = sorted(args.fullres.glob("*/*.jpeg"))

    rgb = [f for f in fullres if Image.open(f).mode == "RGB"]
    out = {f.name: refused(predictor, f.read_bytes()) for f in fullres}
    report["fullres"] = {"n": len(fullres), "refused": sum(bool(v) for v in out.values()),
                         "n_rgb": len(rgb), "refused_rgb": sum(bool(out[f.name]) for f in rgb),
                         "reasons": {k: v for k, v in out.items() if v}}
    print(f"full-resolution samples: {report['fullres']['refused']}/{len(fullres)} refused "
          f"(RGB-encoded: {report['fullres']['refused_rgb']}/{len(rgb)})")

    provided_val = sorted((args.data / "val").glob("*/*.jpeg"))  # a provided val/ folder, too small to be used
    if provided_val:
        reasons = [r for r in (refused(predictor, f.read_bytes()) for f in provided_val) if r]
        report["provided_val"] = {"n": len(provided_val), "refused": len(reasons), "reasons": reasons}
        print(f"provided val/ X-rays: {len(reasons)}/{len(provided_val)} refused")

    if not args.skip_heldout:
        ckpt = torch.load(args.model, map_location="cpu", weights_only=True)
        splits, _, _ = training_data.load(args.data, config.checkpoint_params(ckpt["params"]))
        reasons = [r for r in (refused(predictor, s.path) for s in splits.test) if r]
        report["heldout"] = {"n": len(splits.test), "refused": len(reasons), "rate": len(reasons) / len(splits.test),
                             "reasons": reasons[:20]}
        print(f"held-out X-rays: {len(reasons)}/{len(splits.test)} refused ({len(reasons) / len(splits.test):.2%})")

    from foreign_inputs import foreign, grey_photos, misoriented

    samples = {**foreign(), **grey_photos(), **misoriented(Image.open(fullres[0]))}
    report["foreign"] = {k: refused(predictor, b) for k, (_, b) in samples.items()}
    caught = sum(bool(v) for v in report["foreign"].values())
    print(f"foreign inputs refused: {caught}/{len(samples)}")
    for k, v in report["foreign"].items():
        print(f"  {'REFUSED ' if v else 'ANSWERED'} {k}: {(v or '').removeprefix(gate.PREFIX)}")
    report["scenes"] = scenes(predictor)
    report["cost"] = cost(predictor, fullres[::8], args.repeat)  # 10 uploads, both classes, all sizes
    print("cost per request (median ms):", json.dumps({k: round(v, 3) for k, v in report["cost"].items()}))
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
