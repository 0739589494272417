"""Decode + resize time per full-resolution X-ray, with and without Pillow's draft().

Baseline (named "full decode"): Image.open + load at full resolution, then the same conversion and
resize. Images: ../shared/datasets/fullres_samples (80 originals, ~400-2900 px a side).

    .venv/bin/python benchmarks/bench_preprocess.py [--size 160] [--repeat 3]
"""
import argparse
import statistics
import time
from pathlib import Path

from pipeline.settings import config
from pipeline.data import preprocess


def per_image_ms(files, size: int, draft: bool, repeat: int) -> list[float]:
    times = []
    for path in files:
        data = path.read_bytes()  # disk reads are not what is measured
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            preprocess.to_array(preprocess.load_image(data, draft_size=size if draft else None), size)
            best = min(best, time.perf_counter() - t0)
        times.append(best * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=Path, default=config.REPO_ROOT.parent / "shared/datasets/fullres_samples")
    ap.add_argument("--size", type=int, default=config.load_params()["preprocess"]["image_size"])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    files = sorted(p for p in args.samples.rglob("*") if p.is_file())
    full = per_image_ms(files, args.size, draft=False, repeat=args.repeat)
    drafted = per_image_ms(files, args.size, draft=True, repeat=args.repeat)
    print(f"{len(files)} full-resolution images, output {args.size}x{args.size}, best of {args.repeat} per image")
    for name, t in (("full decode (baseline)", full), ("draft() decode", drafted)):
        print(f"  {name:24s} mean {statistics.mean(t):6.1f} ms  median {statistics.median(t):6.1f} ms  "
              f"max {max(t):6.1f} ms")
    print(f"  speed-up with draft(): {statistics.mean(full) / statistics.mean(drafted):.1f}x (mean), "
          f"{statistics.median(full) / statistics.median(drafted):.1f}x (median)")
    diff = [abs(int(a) - int(b)) for f in files[:10]
            for a, b in zip(preprocess.load_array(f, args.size).ravel(),
                            preprocess.to_array(preprocess.load_image(f), args.size).ravel())]
    print(f"  mean absolute pixel difference draft vs full decode (first 10 images): {statistics.mean(diff):.2f} / 255")


if __name__ == "__main__":
    main()
