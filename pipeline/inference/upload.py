"""An untrusted upload's bytes -> what the model needs, cheapest checks first.

Every upload, from the site, the API or the registered pyfunc, goes through `decode_untrusted`:
the same work as `decode`, run in a decoder process with hard limits (pipeline.inference.isolation), so a
file that gets past the checks below still cannot take a server's memory or CPU.

The order, for every format (nothing is decoded before the cheap checks pass):
1. size of the bytes (preprocess.read_bytes);
2. structure: DICOM header through the bounded parser, once (dicom.parse) and the gate's header
   rules (modality, body part, frames, colour, aspect); JPEG/PNG header, pixel and byte budget,
   JPEG scans (preprocess.open_image, imagefile);
3. decoding, JPEG at the smallest scale still >= the model's input (draft);
4. the gate's picture rules on a reduced copy: colourfulness and aspect (gate.check_colour);
5. grey levels and resizing to the model input (preprocess).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline.data import dicom, imagefile, preprocess
from pipeline.inference import gate
from pipeline.inference import isolation


@dataclass(frozen=True)
class Limits:
    max_bytes: int = preprocess.DEFAULT_MAX_BYTES
    max_pixels: int = preprocess.DEFAULT_MAX_PIXELS
    min_side: int = preprocess.MIN_SIDE


@dataclass
class Decoded:
    """An accepted upload: the model input and what may be kept of the file."""
    array: np.ndarray               # uint8 [S, S]: the model input
    format: str                     # JPEG | PNG | DICOM
    size: tuple[int, int]           # (width, height) of the full image
    warnings: list[str] = field(default_factory=list)  # the gate's cautions (a lateral view...)
    stored: bytes = b""             # the file to keep, without metadata ("" unless asked for)
    stored_format: str = ""         # JPEG | PNG
    stored_plan: list = field(default_factory=list)  # or its pieces, until `kept` puts them together

    @property
    def image(self) -> Image.Image:
        return Image.fromarray(self.array, mode="L")


def decode(data: bytes, size: int, limits: Limits = Limits(), keep: bool = False) -> Decoded:
    """See the module docstring. keep: also return the file to store (`Decoded.stored`).
    Raises preprocess.InvalidImage, or its subclass gate.NotAChestXray."""
    return kept(data, _decode(data, size, limits, keep))


def kept(data: bytes, decoded: Decoded) -> Decoded:
    """The file to store put together from its plan (imagefile.strip_plan) and the caller's own copy
    of the upload: a decoder process sends back the plan, not a second copy of the file."""
    if decoded.stored_plan:
        decoded.stored, decoded.stored_plan = imagefile.assemble(data, decoded.stored_plan), []
    return decoded


def _decode(data: bytes, size: int, limits: Limits, keep: bool) -> Decoded:
    data = preprocess.read_bytes(data, limits.max_bytes)
    headerless = not dicom.is_dicom(data) and dicom.looks_like_headerless(data) and not _raster(data)
    if dicom.is_dicom(data) or headerless:
        return _decode_dicom(data, size, limits, keep, force=headerless)
    opened = preprocess.open_image(data, limits.max_pixels, limits.min_side)   # the header, checked
    fmt = "JPEG" if opened.format == "MPO" else opened.format
    full_size = opened.size
    img = preprocess.load_image(data, draft_size=size, max_pixels=limits.max_pixels, max_bytes=limits.max_bytes,
                                min_side=limits.min_side, inspect=_inspect, opened=opened)
    orientation = opened.getexif().get(0x0112, 1) if keep else 1   # after decoding: a PNG's eXIf may follow IDAT
    try:
        plan = imagefile.strip_plan(data, fmt, orientation) if keep else []
    except imagefile.FileStructureError as exc:
        raise preprocess.InvalidImage(str(exc)) from None
    return Decoded(preprocess.to_array(img, size), fmt, full_size, [], b"", fmt if keep else "", plan)


def _raster(data: bytes) -> bool:
    return data.startswith((b"\xff\xd8", b"\x89PNG"))


def _inspect(img: Image.Image) -> None:
    gate.check_aspect(img.size)
    gate.check_colour(img)


def _decode_dicom(data: bytes, size: int, limits: Limits, keep: bool, force: bool) -> Decoded:
    try:
        parsed = dicom.parse(data, force=force)   # once: the gate reads it, the decoder goes on from it
    except dicom.DicomError as exc:
        raise preprocess.InvalidImage(str(exc)) from None
    warnings = gate.check_dicom_header(parsed.header)
    img = preprocess.dicom_image(data, limits.max_pixels, limits.min_side, parsed=parsed)
    # kept as the rendering the model saw (a DICOM file is all metadata around its pixels)
    stored = png_bytes(img) if keep else b""
    return Decoded(preprocess.to_array(img, size), "DICOM", img.size, warnings, stored, "PNG" if keep else "")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def decode_untrusted(data: bytes, size: int, limits: Limits = Limits(), keep: bool = False) -> Decoded:
    """decode() in a decoder process under CPU, memory and wall-clock limits (pipeline.inference.isolation)."""
    return kept(data, isolation.pool(preload=__name__).run(_decode, data, size, limits, keep))
