"""Quality benchmark: train on the full dataset with the default params.yaml; report the held-out
metrics and the wall time against the targets (AUC >= 0.97, sensitivity >= 0.95 at specificity
>= 0.88, <= 20 minutes of training on 2 CPU cores).

    .venv/bin/python benchmarks/bench_quality.py [--data ../shared/datasets/chest_xray] [--set k=v ...]
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline import config  # noqa: E402
from pipeline.train import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=config.default_data_root())
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="bench-quality-")))
    args = ap.parse_args()
    params = config.load_params(overrides=args.overrides)
    start = time.time()
    result = train(params, args.data, args.out, progress=sys.stderr.isatty())
    wall = time.time() - start
    train_s = sum(h["seconds"] for h in result.history)
    m = result.metrics
    print(json.dumps({"metrics": m, "history": result.history, "system": result.system}, indent=1))
    print(f"\nheld-out ({m['n']} images, {result.dataset['counts']['test']}): AUC {m['auc']:.4f}  "
          f"sensitivity {m['sensitivity']:.4f}  specificity {m['specificity']:.4f}  precision {m['precision']:.4f}  "
          f"F1 {m['f1']:.4f}  accuracy {m['accuracy']:.4f}  threshold {m['threshold']:.4f}")
    print(f"epochs run {len(result.history)} (best {m['best_epoch']}), training {train_s / 60:.1f} min, "
          f"wall (incl. validation, cache, evaluation) {wall / 60:.1f} min on {os.cpu_count()} cores")
    checks = {"AUC >= 0.97": m["auc"] >= 0.97, "sensitivity >= 0.95": m["sensitivity"] >= 0.95,
              "specificity >= 0.88": m["specificity"] >= 0.88, "training <= 20 min": train_s <= 1200}
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")


if __name__ == "__main__":
    main()
