"""Hostile and hospital DICOMs: time and peak memory of the old decode (pydicom.dcmread +
pixel_array, what preprocess did before issue 11) against pipeline.data.dicom, and decode time per
transfer syntax of a CR-sized picture.

Each measurement runs in a fresh process: peak RSS is the kernel's high-water mark (VmHWM, reset
after the imports) minus the resident size before the call.

    .venv/bin/python benchmarks/bench_dicom.py [--side 2048] [--repeat 3]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def one(kind: str, path: str, size: int) -> None:
    """Child process: decode `path` the `kind` way once, print seconds and peak MB as JSON."""
    import io

    import pydicom

    from pipeline.data import preprocess

    data = Path(path).read_bytes()
    Path("/proc/self/clear_refs").write_text("5")
    before = _kb("VmRSS")
    t0 = time.perf_counter()
    try:
        if kind == "old":
            pydicom.dcmread(io.BytesIO(data)).pixel_array
        else:
            preprocess.load_array(data, size, max_pixels=50_000_000)
        outcome = "decoded"
    except Exception as exc:
        outcome = f"refused: {exc}"[:90]
    print(json.dumps({"s": time.perf_counter() - t0, "mb": (_kb("VmHWM") - before) / 1024, "out": outcome}))


def measure(kind: str, path: Path, size: int, timeout: float = 300) -> dict:
    try:
        run = subprocess.run([sys.executable, __file__, "--one", kind, str(path), "--size", str(size)],
                             capture_output=True, text=True, timeout=timeout)
        return json.loads(run.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"s": timeout, "mb": float("nan"), "out": f"killed after {timeout:.0f} s"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=2048, help="side of the per-syntax picture (CR ~ 2000-3000)")
    ap.add_argument("--size", type=int, default=160, help="model input side")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--one", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(*args.one, args.size)

    import numpy as np

    from pipeline.data import preprocess
    from tests.pipeline import dicom_samples as samples

    tmp = Path(tempfile.mkdtemp(prefix="bench-dicom-"))
    hostile = {"deflate bomb (200 MB of zeros)": samples.deflate_bomb(200),
               "40-frame RLE 1024x1024": samples.multiframe_rle(40, 1024)}
    print("hostile files: old = pydicom.dcmread + pixel_array; new = preprocess.load_array "
          "(max_pixels 50 M so that the 40-frame file is decoded, not refused)")
    for name, data in hostile.items():
        path = tmp / "f.dcm"
        path.write_bytes(data)
        for kind in ("old", "new"):
            r = measure(kind, path, args.size)
            print(f"  {name:32s} {len(data) / 1024:7.0f} KB  {kind}: {r['s'] * 1000:8.0f} ms  "
                  f"peak +{r['mb']:6.1f} MB  {r['out']}")

    pixels = (samples.picture(args.side) * 4095).astype(np.uint16)
    print(f"\nper transfer syntax: {args.side}x{args.side} 12-bit picture -> {args.size}x{args.size} "
          f"input, best of {args.repeat}")
    for name in samples.SYNTAXES:
        data = samples.encode(name, pixels)
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            preprocess.load_array(data, args.size)
            best = min(best, time.perf_counter() - t0)
        print(f"  {name:24s} {len(data) / 1024:8.0f} KB  {best * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
