"""The one preprocessing path: bytes or file -> validated grayscale image -> model input.

Training (through the cache), evaluation, the MLflow pyfunc and the Django site all call these
functions, so a model sees exactly the same pixels in production as in training.

Decisions:
- Every image becomes 8-bit grayscale ("L"): X-rays carry no colour, and RGB copies of them only
  triple the input. Alpha is composited onto black; CMYK and palette images go through RGB.
- One intensity rule for every format: values are mapped to 0..255 by the range the file
  *declares*, never by the picture's own min and max. 8-bit stays as is, 16-bit PNG is divided
  by 257 (0..65535 -> 0..255), DICOM goes through its Modality LUT, then its VOI LUT or window
  when it has one (the display range chosen at acquisition), else the range of Bits Stored (see
  dicom.py). Per-image min-max for some formats only made the same film look different as PNG-8,
  PNG-16 or DICOM; contrast normalisation, if any, is a separate step for every image alike.
  A constant (blank) image is refused whatever its format.
- Images are squashed to a square (aspect ratio not kept), because the training drop was resized
  that way upstream; a different geometry at serving time would shift the input distribution.
- Intensity normalisation (`intensity`, chosen per model by `preprocess.intensity`) runs on the
  resized array, after any training augmentation and before mean/std scaling, in `model_input`:
  the one function training, evaluation and serving call. The cache stays model-agnostic.
- JPEGs are decoded with Pillow's draft() at the smallest DCT scale still >= the target size,
  which makes full-resolution uploads several times cheaper to decode.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageFile, ImageOps

from pipeline.data import dicom, imagefile

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently grey
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
MIN_SIDE = 64
# Grayscale equivalent of the ImageNet statistics, so `imagenet` init sees familiar inputs.
MEAN, STD = 0.449, 0.226
OPENED_FORMATS = ("JPEG", "PNG")  # Pillow's JPEG opener also gives MPO (multi-picture, some cameras)
DECODED_BYTES_PER_PIXEL = 2       # decoded bytes allowed per pixel of the limit (as dicom.py)


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
    inspect=None,
    opened: Image.Image | None = None,
) -> Image.Image:
    """Decode and validate one X-ray (JPEG, PNG or DICOM); returns a fully loaded "L" image.

    What decoding will cost is checked from the file's structure first (format, size, pixel and
    byte budget, JPEG scans; DICOM: dicom.py), then it is decoded once. `inspect(img)`, when
    given, sees the picture before it becomes grey (the input gate's colour and shape checks):
    a JPEG in colour through a separate 1/8-scale colour decode, a PNG as decoded.

    `opened`: the same bytes' open_image() when the caller has read the header already.

    Raises InvalidImage for empty, oversized, non-image, corrupt, truncated or bomb files.
    """
    data = read_bytes(source, max_bytes)
    if opened is None and is_dicom(data):
        return dicom_image(data, max_pixels, min_side)
    try:
        img = open_image(data, max_pixels, min_side) if opened is None else opened
    except InvalidImage:
        if dicom.looks_like_headerless(data):
            return dicom_image(data, max_pixels, min_side, force=True)
        raise
    jpeg = img.format in ("JPEG", "MPO")
    if inspect is not None and jpeg:
        if img.mode == "L":
            inspect(img)  # a grey JPEG: its header is all there is to check
        else:
            preview = open_image(data, max_pixels, min_side)
            preview.draft("RGB", (128, 128))
            inspect(_loaded(preview, max_pixels))
    if draft_size and jpeg:
        img.draft("L", (draft_size, draft_size))
    _loaded(img, max_pixels)
    if inspect is not None and not jpeg:
        inspect(img)
    try:
        bits = imagefile.png_significant_bits(data) if img.mode.startswith("I") and not jpeg else None
    except imagefile.FileStructureError as exc:
        raise InvalidImage(str(exc)) from None
    img = ImageOps.exif_transpose(img)
    return _not_blank(to_grayscale(img, bits))


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE) -> Image.Image:
    """A JPEG or PNG upload opened lazily (header only), its geometry and structure checked."""
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own guard agrees with ours (it refuses at 2x)
    try:
        img = Image.open(io.BytesIO(data), formats=OPENED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"decompression bomb: {exc}") from None
    except Exception:
        raise InvalidImage(f"{_sniffed(data)} (expected JPEG, PNG or DICOM)") from None
    _check_geometry(img.size, max_pixels, min_side)
    try:
        if img.format in ("JPEG", "MPO"):
            imagefile.check_jpeg(imagefile.jpeg_info(data), max_pixels)
    except imagefile.FileStructureError as exc:
        raise InvalidImage(str(exc)) from None
    return img


def _sniffed(data: bytes) -> str:
    """What a refused file is, in words, from its first bytes."""
    for magic, name in ((b"GIF8", "GIF"), (b"II*\0", "TIFF"), (b"MM\0*", "TIFF"), (b"BM", "BMP"),
                        (b"\0\0\0\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"%PDF", "PDF")):
        if data.startswith(magic):
            return f"unsupported format {name}"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "unsupported format WEBP"
    return "not an image"


def _loaded(img: Image.Image, max_pixels: int) -> Image.Image:
    """Decode, once the decoded size (after any draft) fits the byte budget: a colour or 16-bit
    image may use what an 8-bit grey one of the pixel limit does, twice over (as dicom.py)."""
    bands = len(img.getbands()) * (2 if img.mode.startswith("I;16") else 4 if img.mode in ("I", "F") else 1)
    decoded = img.size[0] * img.size[1] * bands
    if decoded > DECODED_BYTES_PER_PIXEL * max_pixels:
        raise InvalidImage(f"decompression bomb: {img.size[0]}x{img.size[1]} {img.mode} = "
                           f"{decoded / 2**20:.0f} MB decoded > {DECODED_BYTES_PER_PIXEL * max_pixels / 2**20:.0f} MB limit")
    try:
        img.load()
    except Exception as exc:  # truncated data, broken Huffman tables, CRC errors, bombs...
        raise InvalidImage(f"corrupt or truncated image: {exc}"[:300]) from None
    return img


def _not_blank(img: Image.Image) -> Image.Image:
    lo, hi = img.getextrema()
    if lo == hi:
        raise InvalidImage("blank image (every pixel has the same value)")
    return img


def _check_geometry(size: tuple[int, int], max_pixels: int, min_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise InvalidImage(
            f"decompression bomb: {width}x{height} = {width * height / 1e6:.0f} Mpx "
            f"> {max_pixels / 1e6:.0f} Mpx limit"
        )
    if min(width, height) < min_side:
        raise InvalidImage(f"image too small: {width}x{height} (minimum side {min_side} px)")


def to_grayscale(img: Image.Image, significant_bits: int | None = None) -> Image.Image:
    """Any Pillow mode -> "L" (see the module docstring for the rules). `significant_bits`: a 16-bit
    PNG's sBIT, its declared range when the samples were stored unscaled (imagefile)."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG ("I" holds them in some versions)
        return _scaled(np.asarray(img), 0, sixteen_bit_range(img, significant_bits))
    if img.mode == "F":  # no declared range: taken as 0..1
        return _scaled(np.asarray(img), 0.0, 1.0)
    if img.mode == "P":  # through the palette: one byte per pixel in, one out (never a full RGBA copy)
        return Image.fromarray(_palette_grey(img)[np.asarray(img)], mode="L")
    if img.mode in ("RGBA", "LA", "PA"):  # composited onto black: grey x alpha
        alpha = img.getchannel("A")
        return ImageChops.multiply(img.convert("RGB" if img.mode == "PA" else img.mode[:-1]).convert("L"), alpha)
    if img.mode == "CMYK":
        img = img.convert("RGB")
    return img.convert("L")


def sixteen_bit_range(img: Image.Image, significant_bits: int | None) -> int:
    """The top of a 16-bit PNG's declared range: 65535, or 2**sBIT - 1 when sBIT says fewer bits are
    significant and the samples are stored unscaled (every value fits in them: a 12-bit film
    exported as 0..4095). The PNG standard has encoders scale such samples up to 16 bits; many
    medical exporters do not, and then 65535 would show the film as grey levels 0-15."""
    if significant_bits and 0 < significant_bits < 16:
        top = (1 << significant_bits) - 1
        if img.getextrema()[1] <= top:
            return top
    return 65535


def _palette_grey(img: Image.Image) -> np.ndarray:
    """uint8 [256]: the grey level of each palette entry, transparency composited onto black."""
    swatch = Image.new("P", (256, 1))
    swatch.putdata(list(range(256)))
    swatch.putpalette(img.getpalette("RGB") or [0] * 768)
    if "transparency" in img.info:
        swatch.info["transparency"] = img.info["transparency"]
        swatch = Image.alpha_composite(Image.new("RGBA", swatch.size, (0, 0, 0, 255)), swatch.convert("RGBA"))
    return np.asarray(swatch.convert("L"))[0]


def _scaled(pixels: np.ndarray, lo: float, hi: float) -> Image.Image:
    """Pixel values in the declared range lo..hi -> "L" (clipped, rounded)."""
    arr = (np.asarray(pixels, np.float32) - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.clip(np.nan_to_num(arr) + 0.5, 0, 255).astype(np.uint8), mode="L")


def is_dicom(data: bytes) -> bool:
    return dicom.is_dicom(data)


def dicom_image(data: bytes, max_pixels: int, min_side: int, force: bool = False, parsed=None) -> Image.Image:
    """DICOM -> "L" through dicom.decode: header checked first, one frame, one intensity rule
    (`parsed`: the header already read by dicom.parse, not parsed again)."""
    try:
        pixels = dicom.decode(data, max_pixels, min_side, force=force, parsed=parsed)
    except dicom.DicomError as exc:
        raise InvalidImage(str(exc)) from None
    return _not_blank(Image.fromarray(pixels, mode="L"))


def to_array(img: Image.Image, size: int) -> np.ndarray:
    """"L" image -> uint8 [size, size] (squashed, antialiased)."""
    if img.mode != "L":
        img = to_grayscale(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers


INTENSITY_MODES = ("none", "equalize")


def equalize(x):
    """Per-image histogram equalisation of a tensor [B, 1, H, W] on the 0..255 scale (uint8 or float).

    Why: X-rays of another machine or period differ most in their tone curve (exposure, window,
    vendor look-up tables), and in this training drop NORMAL films are systematically more
    contrasted than PNEUMONIA ones: a shortcut that the tone curve of a new machine breaks.
    Equalisation maps every film to the same flat grey-level distribution, so any monotone tone
    change (gamma, contrast, window, 8 vs 16 bits) gives (nearly) the same input. Batched on the
    256 grey levels, so it costs well under a millisecond per image.
    """
    import torch

    b = x.shape[0]
    q = x.float().round().clamp(0, 255).long().reshape(b, -1)
    hist = torch.zeros(b, 256, device=x.device).scatter_add_(1, q, torch.ones(q.shape, device=x.device))
    cdf = hist.cumsum(1)
    first = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).min(1, keepdim=True).values
    lut = ((cdf - first) / (q.shape[1] - first).clamp(min=1) * 255.0).clamp(0, 255)
    return lut.gather(1, q).reshape(x.shape)


def intensity(x, mode: str):
    """The model's intensity normalisation (params `preprocess.intensity`) of [B, 1, H, W] 0..255."""
    if mode == "equalize":
        return equalize(x)
    if mode in ("none", "", None):
        return x.float()
    raise ValueError(f"preprocess.intensity={mode!r}: expected one of {', '.join(INTENSITY_MODES)}")


def equalize_arrays(arrays: np.ndarray) -> np.ndarray:
    """`equalize` in numpy, for the serving tier (no torch there): uint8 [N, S, S] -> float32
    [N, S, S] on 0..255. The same float32 operations in the same order: equal to `equalize` to the
    last bit on 8-bit input (tests/pipeline/test_preprocess.py)."""
    n = len(arrays)
    q = np.asarray(arrays, np.uint8).reshape(n, -1)
    hist = np.zeros((n, 256), np.float32)
    for i in range(n):
        hist[i] = np.bincount(q[i], minlength=256)
    cdf = np.cumsum(hist, axis=1, dtype=np.float32)
    first = np.where(hist > 0, cdf, np.float32(np.inf)).min(1, keepdims=True)
    lut = np.clip((cdf - first) / np.maximum(np.float32(q.shape[1]) - first, np.float32(1)) * np.float32(255.0), 0, 255)
    return np.take_along_axis(lut, q.astype(np.intp), 1).reshape(np.shape(arrays)).astype(np.float32)


def model_input_arrays(arrays: np.ndarray, mode: str = "none") -> np.ndarray:
    """`model_input` in numpy for the serving tier: uint8 [N, S, S] -> float32 [N, 1, S, S]."""
    if mode == "equalize":
        x = equalize_arrays(arrays)
    elif mode in ("none", "", None):
        x = np.asarray(arrays, np.float32)
    else:
        raise ValueError(f"preprocess.intensity={mode!r}: expected one of {', '.join(INTENSITY_MODES)}")
    return ((x / np.float32(255.0) - np.float32(MEAN)) / np.float32(STD))[:, None].astype(np.float32)


def normalize(batch):
    """0..255 tensor [..., H, W] -> float32 mean/std-scaled values."""
    return (batch.float() / 255.0 - MEAN) / STD


def model_input(batch, mode: str = "none"):
    """uint8 (or augmented float) [B, 1, S, S] -> float32 network input: intensity, then scaling.
    The one definition training, evaluation, the pyfunc and the web app share."""
    return normalize(intensity(batch, mode))


def to_tensor(arr: np.ndarray, mode: str = "none"):
    """uint8 [S, S] -> float32 [1, S, S]."""
    import torch

    return model_input(torch.from_numpy(np.ascontiguousarray(arr))[None, None], mode)[0]


def load_array(source: bytes | str | Path, size: int, **limits) -> np.ndarray:
    """bytes or path -> uint8 [size, size]: what the cache stores and the predictor consumes."""
    return to_array(load_image(source, draft_size=size, **limits), size)


def load_spread(files: list[Path], size: int, n: int) -> np.ndarray | None:
    """uint8 [<= n, size, size]: n images spread evenly over `files` (unreadable ones skipped);
    None if none could be read. Validation and calibration samples of a dataset."""
    arrays = []
    for path in files[::max(1, len(files) // n)]:
        try:
            arrays.append(load_array(path, size))
        except Exception:  # noqa: BLE001 - an unusable file: the next one
            continue
        if len(arrays) == n:
            break
    return np.stack(arrays) if arrays else None


def preprocess(source: bytes | str | Path, size: int, mode: str = "none", **limits):
    """bytes or path -> float32 tensor [1, size, size], ready for a model using intensity `mode`."""
    return to_tensor(load_array(source, size, **limits), mode)
