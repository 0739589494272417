"""imagefile: what the site keeps of an upload is its pixels, without metadata (issue 25 item 13)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin

from pipeline.data import imagefile
from pipeline.inference import upload


def _film() -> Image.Image:
    y, x = np.mgrid[0:200, 0:160]
    return Image.fromarray(((x + y) % 256).astype(np.uint8), mode="L")


def test_jpeg_exif_and_comments_are_dropped_the_pixels_and_orientation_kept():
    exif = Image.Exif()
    exif[0x010E] = "DOE^JOHN 1975-03-02"  # ImageDescription
    exif[0x0112] = 6                       # rotated
    buf = io.BytesIO()
    _film().save(buf, format="JPEG", exif=exif.tobytes(), comment=b"patient DOE^JOHN")
    data = buf.getvalue() + b"trailing DOE^JOHN"
    kept = upload.decode(data, 64, keep=True).stored
    assert b"DOE^JOHN" in data and b"DOE^JOHN" not in kept
    img = Image.open(io.BytesIO(kept))
    assert img.getexif().get(0x0112) == 6 and 0x010E not in img.getexif()
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(data))))


def test_png_text_chunks_are_dropped_the_pixels_kept():
    info = PngImagePlugin.PngInfo()
    info.add_text("Patient", "DOE^JOHN")
    buf = io.BytesIO()
    _film().save(buf, format="PNG", pnginfo=info)
    kept = imagefile.strip(buf.getvalue(), "PNG")
    assert b"DOE^JOHN" in buf.getvalue() and b"DOE^JOHN" not in kept
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(kept))), np.asarray(_film()))
