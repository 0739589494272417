"""Fuzz of the one preprocessing path (`preprocess.load_array`, what training, the pyfunc and the
site all call): random and mutated JPEG, PNG and DICOM bytes.

Bounded: FUZZ_CASES cases (seeded, so a failure replays) and FUZZ_SECONDS of wall time. Every case
must end in an image or InvalidImage, never another exception, and its peak resident memory (the
kernel's high-water mark, reset before each case) must stay under MEMORY_CEILING_MB above what
the process held before it.
"""
import io
import random
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data import preprocess
from pipeline.inference import upload
from pipeline.data.preprocess import InvalidImage
from tests.pipeline import dicom_samples

FUZZ_CASES = 1000
FUZZ_SECONDS = 60
MEMORY_CEILING_MB = 200   # per request, over the baseline; a legal 40 Mpx 16-bit DICOM is the upper bound


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def seeds() -> dict[str, bytes]:
    y, x = np.mgrid[0:160, 0:200]
    gray = ((x * 255 / 199) * 0.7 + (y % 40) * 2).astype(np.uint8)
    out = {}
    for name, img, fmt, kw in [
        ("jpeg", Image.fromarray(gray), "JPEG", {"quality": 85}),
        ("jpeg-progressive", Image.fromarray(gray).convert("RGB"), "JPEG", {"progressive": True}),
        ("png-8", Image.fromarray(gray), "PNG", {}),
        ("png-16", Image.fromarray(gray.astype(np.uint16) * 257), "PNG", {}),
        ("png-rgba", Image.fromarray(gray).convert("RGBA"), "PNG", {}),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out[name] = buf.getvalue()
    pixels = (dicom_samples.picture(128) * 4095).astype(np.uint16)
    for name in ("explicit", "deflate", "rle", "jpeg-lossless-sv1", "jpeg-ls-lossless", "jpeg2000-lossless",
                 "jpeg-extended-12bit"):
        out[f"dicom-{name}"] = dicom_samples.encode(name, pixels)
    out["dicom-multiframe"] = dicom_samples.multiframe_rle(4, 128)
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.random()
        pos = rng.randrange(len(buf)) if buf else 0
        if kind < 0.35:  # flip a bit
            if buf:
                buf[pos] ^= 1 << rng.randrange(8)
        elif kind < 0.6:  # an interesting byte (sizes, lengths and markers live in these)
            if buf:
                buf[pos] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE))
        elif kind < 0.7:  # a large little/big-endian length or size
            buf[pos:pos + 4] = rng.choice((b"\xff\xff\xff\x7f", b"\x7f\xff\xff\xff", b"\x00\x00\x01\x00"))
        elif kind < 0.8:  # truncate
            del buf[rng.randrange(1, max(len(buf), 2)):]
        elif kind < 0.9:  # duplicate a chunk
            end = min(len(buf), pos + rng.randint(1, 512))
            buf[pos:pos] = buf[pos:end]
        else:  # random garbage
            buf[pos:pos + rng.randint(1, 64)] = rng.randbytes(rng.randint(1, 64))
    return bytes(buf)


def cases(rng: random.Random, corpus: dict[str, bytes]):
    names = list(corpus)
    headers = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"\0" * 128 + b"DICM", b"\x08\x00\x05\x00"]
    for i in range(FUZZ_CASES):
        r = rng.random()
        if r < 0.08:
            yield f"random-{i}", rng.randbytes(rng.randint(0, 4096))
        elif r < 0.15:  # a valid signature then garbage
            yield f"header-garbage-{i}", rng.choice(headers) + rng.randbytes(rng.randint(0, 4096))
        else:
            name = rng.choice(names)
            yield f"{name}-{i}", mutate(corpus[name], rng)


def test_fuzz_preprocessing_path():
    rng = random.Random(20261124)
    corpus = seeds()
    for name, data in corpus.items():  # every seed is a good file: the mutations start from valid
        assert preprocess.load_array(data, 64).shape == (64, 64), name
    can_reset = _reset_peak()
    crashes, over, outcomes = [], [], {"ok": 0, "invalid": 0}
    worst = (0.0, "")
    started, count = time.perf_counter(), 0
    for name, data in cases(rng, corpus):
        if time.perf_counter() - started > FUZZ_SECONDS:
            break
        count += 1
        if can_reset:
            _reset_peak()
            before = _status_kb("VmRSS")
        try:
            upload.decode(data, 64, keep=True)  # the whole upload path: checks, gate rules, decode, strip
            outcomes["ok"] += 1
        except InvalidImage:
            outcomes["invalid"] += 1
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # anything else is a bug (a Rust panic is a BaseException)
            crashes.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
        if can_reset:
            peak_mb = (_status_kb("VmHWM") - before) / 1024
            worst = max(worst, (peak_mb, name))
            if peak_mb > MEMORY_CEILING_MB:
                over.append(f"{name}: {peak_mb:.0f} MB")
    elapsed = time.perf_counter() - started
    print(f"\nfuzz: {count} cases in {elapsed:.1f} s, {outcomes}, worst peak RSS "
          f"{worst[0]:.1f} MB over baseline ({worst[1]}), ceiling {MEMORY_CEILING_MB} MB")
    assert not crashes, "\n".join(crashes[:20])
    assert not over, over
    assert count >= min(FUZZ_CASES, 300), f"only {count} cases in {FUZZ_SECONDS} s"
    if not can_reset:
        pytest.skip("peak RSS could not be reset here (/proc/self/clear_refs): memory not checked")
