"""Hostile uploads, built at test time (nothing stored in git): each file of issue 25's table, and
the 12-bit PNG that must be answered. Used by tests/web/test_hostile_uploads.py (the live site,
the API, the pyfunc) and benchmarks/bench_hostile.py.

Each maker returns bytes; `hostile()` maps a name to (file name, bytes, what the refusal says).
"""
from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from tests.pipeline import dicom_samples


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def film(side: int = 1024) -> Image.Image:
    """A grey 'film' (smooth ramp + disc): decodable, never meant to be answered."""
    return Image.fromarray((dicom_samples.picture(side) * 255).astype(np.uint8), mode="L")


def noop_scans_jpeg(scans: int = 2000, side: int = 1024) -> bytes:
    """A progressive JPEG whose last (small) refinement scan is repeated `scans` times: each repeat
    makes the decoder walk every block again (~500 KB, minutes of CPU if decoded)."""
    data = _jpeg(film(side), progressive=True, quality=90)
    starts = [m.start() for m in re.finditer(rb"\xff\xda", data)]
    scan = min((data[a:b] for a, b in zip(starts, starts[1:] + [len(data) - 2])), key=len)
    return data[:-2] + scan * scans + b"\xff\xd9"


def dicom_jpeg_baseline_noop_scans(scans: int = 2000, side: int = 512) -> bytes:
    """A DICOM saying JPEG Baseline whose frame is the progressive no-op-scan JPEG above."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = dicom_samples.dataset(np.zeros((side, side), np.uint16), JPEGBaseline8Bit, bits_stored=8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([noop_scans_jpeg(scans, side)])
    ds["PixelData"].VR = "OB"
    return dicom_samples.to_bytes(ds)


def dicom_j2k_many_components(components: int = 128, side: int = 2048) -> bytes:
    """A DICOM whose JPEG 2000 codestream's SIZ declares `components` components (the header
    says 1 sample): the codec would allocate for all of them."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    siz = struct.pack(">HHIIIIIIIIH", 38 + 3 * components, 0, side, side, 0, 0, side, side, 0, 0, components)
    siz += bytes([11, 1, 1]) * components  # 12-bit unsigned, no subsampling
    cod = b"\xff\x52" + struct.pack(">HBBHBBBBBB", 12, 0, 0, 1, 0, 5, 4, 4, 0, 1)
    qcd = b"\xff\x5c" + struct.pack(">HB", 4, 0x40) + b"\x00"
    stream = b"\xff\x4f\xff\x51" + siz + cod + qcd + b"\xff\x90" + struct.pack(">HHIBB", 10, 0, 14, 0, 1) + \
        b"\xff\x93" + bytes(47_000) + b"\xff\xd9"
    ds = dicom_samples.dataset(np.zeros((side, side), np.uint16), JPEG2000Lossless)
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    return dicom_samples.to_bytes(ds)


def dicom_big_header(mb: int = 10) -> bytes:
    """A DICOM with `mb` MB of tiny private elements before Pixel Data."""
    ds = dicom_samples.dataset((dicom_samples.picture(256) * 4095).astype(np.uint16), bits_stored=12)
    raw = dicom_samples.to_bytes(ds)
    at = raw.index(b"\xe0\x7f\x10\x00")  # Pixel Data: the private elements go just before it
    element = b"\x09\x00\x10\x10" + b"LO" + struct.pack("<H", 2) + b"ab"  # (0009,1010) LO "ab"
    return raw[:at] + element * ((mb << 20) // len(element)) + raw[at:]


def twelve_bit_png(xray: Image.Image) -> bytes:
    """A real film as a 16-bit PNG holding unscaled 12-bit values, with sBIT = 12."""
    from pipeline.data.imagefile import with_significant_bits

    values = (np.asarray(xray.convert("L"), np.uint32) * 4095 + 127) // 255
    return with_significant_bits(_png(Image.fromarray(values.astype(np.uint16))), 12)


def hostile() -> dict[str, tuple[str, bytes, str]]:
    """name -> (file name, bytes, a word the refusal's reason must contain)."""
    colour = Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1200, 3), np.uint8))
    colour_jpeg, colour_png = _jpeg(colour, quality=90), _png(colour)
    return {
        "deflate-bomb DICOM": ("bomb.dcm", dicom_samples.deflate_bomb(200), "bomb"),
        "DICOM with a 10 MB header": ("header.dcm", dicom_big_header(10), "header"),
        "palette PNG of 169 Mpx": ("palette.png", _png(Image.new("P", (13000, 13000)), optimize=True), "bomb"),
        "bilevel PNG of 400 Mpx": ("bilevel.png", _png(Image.new("1", (20000, 20000)), optimize=True), "bomb"),
        "TIFF": ("scan.tiff", _tiff(film()), "TIFF"),
        "GIF": ("anim.gif", _gif(film()), "GIF"),
        "truncated colour JPEG": ("cut.jpg", colour_jpeg[:len(colour_jpeg) // 2], "truncated"),
        "truncated colour PNG": ("cut.png", colour_png[:len(colour_png) // 2], "truncated"),
        "progressive JPEG of no-op scans": ("scans.jpg", noop_scans_jpeg(), "scans"),
        "DICOM, JPEG baseline syntax, no-op scans": ("scans.dcm", dicom_jpeg_baseline_noop_scans(), "scans"),
        "DICOM, JPEG 2000 of 128 components": ("j2k.dcm", dicom_j2k_many_components(), "components"),
    }


def _tiff(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    return buf.getvalue()


def _gif(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="GIF")
    return buf.getvalue()


# --- what a file costs a server: peak memory of its process tree ------------------------------
def _tree(root: int) -> list[int]:
    """root and every process below it (gunicorn master, workers, their decoder processes)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += frontier
    return found


def _kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory:
    """Growth of peak resident memory (VmHWM) over a block, summed over a process tree (Linux)."""

    def __init__(self, root: int):
        self.root = root

    def __enter__(self):
        self.before = {}
        for pid in _tree(self.root):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            except OSError:
                continue
            self.before[pid] = _kb(pid, "VmRSS")
        return self

    def __exit__(self, *exc):
        self.mib = sum(max(0, _kb(pid, "VmHWM") - self.before.get(pid, 0)) for pid in _tree(self.root)) / 1024
