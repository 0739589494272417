"""The one preprocessing path: bytes or file -> validated grayscale image -> model input.

Training (through the cache), evaluation, the MLflow pyfunc and the Django site all call these
functions, so a model sees exactly the same pixels in production as in training.

Decisions:
- Every image becomes 8-bit grayscale ("L"): X-rays carry no colour, and RGB copies of them only
  triple the input. 16-bit and float images are min-max scaled to 0..255 (their bit depth varies
  by device); alpha is composited onto black; CMYK and palette images go through RGB.
- Images are squashed to a square (aspect ratio not kept), because the training drop was resized
  that way upstream; a different geometry at serving time would shift the input distribution.
- JPEGs are decoded with Pillow's draft() at the smallest DCT scale still >= the target size,
  which makes full-resolution uploads several times cheaper to decode.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently grey
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
MIN_SIDE = 64
# Grayscale equivalent of the ImageNet statistics, so `imagenet` init sees familiar inputs.
MEAN, STD = 0.449, 0.226
ACCEPTED_FORMATS = {"JPEG", "PNG", "MPO"}  # MPO: multi-picture JPEG written by some cameras


class InvalidImage(ValueError):
    """The file cannot be used as an X-ray; `reason` says why in words a person understands."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_bytes(source: bytes | str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidImage(f"file not found: {path}")
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidImage(f"file too large: {size / 2**20:.1f} MB > {max_bytes / 2**20:.0f} MB")
        data = path.read_bytes()
    if not data:
        raise InvalidImage("empty file")
    if len(data) > max_bytes:
        raise InvalidImage(f"file too large: {len(data) / 2**20:.1f} MB > {max_bytes / 2**20:.0f} MB")
    return data


def load_image(
    source: bytes | str | Path,
    draft_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_side: int = MIN_SIDE,
) -> Image.Image:
    """Decode and validate one X-ray (JPEG, PNG or DICOM); returns a fully loaded "L" image.

    Raises InvalidImage for empty, oversized, non-image, corrupt, truncated or bomb files.
    """
    data = read_bytes(source, max_bytes)
    if is_dicom(data):
        return _dicom_image(data, max_pixels, min_side)
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"decompression bomb: {exc}") from None
    except Exception:
        if _looks_like_headerless_dicom(data):
            return _dicom_image(data, max_pixels, min_side, force=True)
        raise InvalidImage("not an image (expected JPEG, PNG or DICOM)") from None
    if img.format not in ACCEPTED_FORMATS:
        raise InvalidImage(f"unsupported format {img.format} (expected JPEG, PNG or DICOM)")
    _check_geometry(img.size, max_pixels, min_side)
    if draft_size and img.format in ("JPEG", "MPO"):
        img.draft("L", (draft_size, draft_size))
    try:
        img.load()
    except Exception as exc:  # truncated data, broken Huffman tables, CRC errors...
        raise InvalidImage(f"corrupt or truncated image: {exc}") from None
    img = ImageOps.exif_transpose(img)
    return to_grayscale(img)


def _check_geometry(size: tuple[int, int], max_pixels: int, min_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise InvalidImage(
            f"decompression bomb: {width}x{height} = {width * height / 1e6:.0f} Mpx "
            f"> {max_pixels / 1e6:.0f} Mpx limit"
        )
    if min(width, height) < min_side:
        raise InvalidImage(f"image too small: {width}x{height} (minimum side {min_side} px)")


def to_grayscale(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> "L" (see the module docstring for the rules)."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return array_from_pixels(np.asarray(img))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    if img.mode == "CMYK":
        img = img.convert("RGB")
    return img.convert("L")


def array_from_pixels(pixels: np.ndarray) -> Image.Image:
    """Pixel array of any dtype (16-bit PNG, windowed DICOM) -> "L" image by min-max scaling."""
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim == 3:  # colour: average the channels
        arr = arr[..., :3].mean(axis=-1)
    if arr.ndim != 2:
        raise InvalidImage(f"unsupported pixel array shape {pixels.shape}")
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        raise InvalidImage("blank image (every pixel has the same value)")
    scaled = (arr - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")


def is_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def _looks_like_headerless_dicom(data: bytes) -> bool:
    """Old DICOM files have no 128-byte preamble: they start with a group 0x0008 (or 0x0002) tag."""
    return len(data) > 8 and data[1:2] == b"\x00" and data[0:1] in (b"\x02", b"\x08")


def _dicom_image(data: bytes, max_pixels: int, min_side: int, force: bool = False) -> Image.Image:
    """DICOM -> "L": VOI LUT / window applied, MONOCHROME1 inverted so bone is always bright."""
    import pydicom
    from pydicom.pixels import apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=force)
        if "PixelData" not in ds:
            raise InvalidImage("DICOM file without pixel data")
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # old file: no meta header
            from pydicom.dataset import FileMetaDataset
            from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

            ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
            implicit = getattr(ds, "original_encoding", (True, True))[0]
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        rows, cols = int(ds.Rows), int(ds.Columns)
        _check_geometry((cols, rows), max_pixels, min_side)
        pixels = ds.pixel_array
    except InvalidImage:
        raise
    except Exception as exc:
        raise InvalidImage(f"unreadable DICOM: {exc}") from None
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[0]  # multi-frame: the first frame
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric.startswith("MONOCHROME"):
        pixels = apply_voi_lut(pixels, ds)
    img = array_from_pixels(pixels)
    if photometric == "MONOCHROME1":
        img = ImageOps.invert(img)
    return img


def to_array(img: Image.Image, size: int) -> np.ndarray:
    """"L" image -> uint8 [size, size] (squashed, antialiased)."""
    if img.mode != "L":
        img = to_grayscale(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers


def normalize(batch):
    """uint8 tensor [..., H, W] -> float32 normalised model input (training and inference)."""
    return (batch.float() / 255.0 - MEAN) / STD


def to_tensor(arr: np.ndarray):
    """uint8 [S, S] -> float32 [1, S, S]."""
    import torch

    return normalize(torch.from_numpy(np.ascontiguousarray(arr))).unsqueeze(0)


def load_array(source: bytes | str | Path, size: int, **limits) -> np.ndarray:
    """bytes or path -> uint8 [size, size]: what the cache stores and the predictor consumes."""
    return to_array(load_image(source, draft_size=size, **limits), size)


def preprocess(source: bytes | str | Path, size: int, **limits):
    """bytes or path -> float32 tensor [1, size, size], ready for the model."""
    return to_tensor(load_array(source, size, **limits))
