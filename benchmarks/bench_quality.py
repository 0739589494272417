"""Quality benchmark: what a model is worth in distribution, under acquisition shifts, calibrated.

Trains with the default params.yaml (plus --set overrides) on the full dataset and prints the
held-out figures, each stress shift (held-out patients re-encoded under it), the worst case,
calibration (ECE, Brier) and the training minutes, against the targets of the platform
(held-out AUC >= 0.97, sensitivity >= 0.95, worst-shift AUC >= 0.95, ECE <= 0.05, <= 20 min of
training on 2 CPU cores). The ablation table compares recipes side by side:

    .venv/bin/python benchmarks/bench_quality.py                                  # the default recipe
    .venv/bin/python benchmarks/bench_quality.py --ablation "no equalisation=preprocess.intensity=none" \\
        --ablation "no EMA=train.ema_decay=0"                                     # + one run per variant
    .venv/bin/python benchmarks/bench_quality.py --table runs/a runs/b            # table of finished runs

Each --ablation is "label=key=value[;key=value...]"; a finished run is a `pipeline train` output
folder (metrics.json + history.json).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from pipeline.settings import config
from pipeline.evaluation import stress
from pipeline.settings.params import Params
from pipeline.training.train import train

COLUMNS = ("auc", "sensitivity", "specificity", "ece", "stress_mean_auc", "stress_worst_auc",
           "stress_worst_sensitivity", "stress_worst_specificity", "stress_mean_ece")


def run(params: Params, data: Path, out: Path) -> dict:
    start = time.time()
    result = train(params, data, out, progress=False)
    return {"metrics": result.metrics, "train_min": sum(h["seconds"] for h in result.history) / 60,
            "wall_min": (time.time() - start) / 60, "epochs": len(result.history)}


def load_run(folder: Path) -> dict:
    history = json.loads((folder / "history.json").read_text())
    return {"metrics": json.loads((folder / "metrics.json").read_text()),
            "train_min": sum(h["seconds"] for h in history) / 60, "wall_min": float("nan"), "epochs": len(history)}


def report(label: str, r: dict) -> None:
    m = r["metrics"]
    print(f"\n== {label}")
    print(f"held-out ({m['n']} images): AUC {m['auc']:.4f}  sensitivity {m['sensitivity']:.3f}  specificity "
          f"{m['specificity']:.3f}  at threshold {m['threshold']:.3f} (clean-only rule: {m.get('clean_threshold', 0):.3f})")
    print(f"calibration: held-out ECE {m['ece']:.3f}  Brier {m['brier']:.3f}; validation ECE "
          f"{m.get('val_ece_uncalibrated', float('nan')):.3f} uncalibrated -> {m.get('val_ece', float('nan')):.3f}")
    per = {"n": m["stress_n"], "per_shift": m["stress_per_shift"], "mean_auc": m["stress_mean_auc"],
           **{f"worst_{k}": m[f"stress_worst_{k}"] for k in ("auc", "sensitivity", "specificity")},
           **{f"worst_{k}_shift": m["stress_worst_shift"][k] for k in ("auc", "sensitivity", "specificity")}}
    print(f"stress ({m['stress_n']} held-out images x {m['stress_shifts']} shifts), at the stored threshold:")
    print(stress.format_table(per))
    print(f"training {r['train_min']:.1f} min ({r['epochs']} epochs), wall {r['wall_min']:.1f} min on "
          f"{os.cpu_count()} cores")
    checks = {"held-out AUC >= 0.97": m["auc"] >= 0.97, "held-out sensitivity >= 0.95": m["sensitivity"] >= 0.95,
              "worst-shift AUC >= 0.95": m["stress_worst_auc"] >= 0.95, "held-out ECE <= 0.05": m["ece"] <= 0.05,
              "training <= 20 min": r["train_min"] <= 20}
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")


def table(rows: dict[str, dict]) -> None:
    print("\n| recipe | " + " | ".join(COLUMNS) + " | train min |")
    print("|---|" + "---|" * (len(COLUMNS) + 1))
    for label, r in rows.items():
        m = r["metrics"]
        print(f"| {label} | " + " | ".join(f"{m.get(c, float('nan')):.3f}" for c in COLUMNS)
              + f" | {r['train_min']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=config.default_data_root())
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--ablation", action="append", default=[], help="label=key=value[;key=value...]")
    ap.add_argument("--table", nargs="*", type=Path, help="finished run folders: print, train nothing")
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="bench-quality-")))
    args = ap.parse_args()
    rows: dict[str, dict] = {}
    if args.table:
        for folder in args.table:
            rows[folder.name] = load_run(folder)
    else:
        params = config.load_params(overrides=args.overrides)
        rows["default"] = run(params, args.data, args.out / "default")
        for spec in args.ablation:
            label, _, sets = spec.partition("=")
            variant = config.apply_overrides(params, [s for s in sets.split(";") if s])
            rows[label] = run(variant, args.data, args.out / label.replace(" ", "_"))
    for label, r in rows.items():
        report(label, r)
    table(rows)


if __name__ == "__main__":
    main()
