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


def test_the_decoder_sends_back_a_plan_of_the_kept_file_not_the_file():
    """decode_untrusted keeps the same file as decode, for JPEG (orientation tag added) and PNG
    (eXIf chunk added), while the decoder process answers with ranges and a few new bytes."""
    import pickle

    from pipeline.inference import isolation

    exif = Image.Exif()
    exif[0x0112] = 6
    noise = np.random.default_rng(0).integers(0, 256, (600, 480), dtype=np.uint8)   # a file of some size
    for fmt, extra in (("JPEG", {"exif": exif.tobytes(), "quality": 95}), ("PNG", {"exif": exif})):
        buf = io.BytesIO()
        Image.fromarray(noise, mode="L").save(buf, format=fmt, **extra)
        data = buf.getvalue()
        here = upload.decode(data, 64, keep=True)
        there = upload.decode_untrusted(data, 64, keep=True)
        assert there.stored == here.stored and there.stored_format == fmt and not there.stored_plan
        assert Image.open(io.BytesIO(there.stored)).getexif().get(0x0112) == 6
        reply = isolation.pool(preload="pipeline.inference.upload").run(upload._decode, data, 64, upload.Limits(), True)
        assert len(pickle.dumps(reply)) < len(data) // 4 < len(here.stored)   # the model input and the plan
