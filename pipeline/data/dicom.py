"""DICOM uploads: header first, bounded work, one frame, one intensity rule.

An upload is untrusted, so nothing is decoded before the header says it fits the budget:
- The header (everything before Pixel Data) is parsed from at most HEADER_BUDGET bytes; a larger
  header is refused, which also bounds the parse time.
- Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99) is inflated as a stream with a byte
  cap: first only the header budget, then exactly what the declared pixel data needs. A file that
  would inflate past that (a "deflate bomb": 200 KB that inflates to 200 MB) is refused after at
  most header + pixel budget bytes of work, never inflated whole.
- frames x rows x columns x samples x bytes is checked against the pixel budget before any
  decoding, and only the first frame is decoded (compressed multi-frame files cost one frame).
- For JPEG-family frames the codestream's own size and components must match the header, since
  the codec allocates what the codestream says, not what the DICOM header says; a JPEG frame's
  scans and a JPEG 2000 frame's tiles are counted, and its bit depth checked (`_check_codestream`, imagefile.check_frame).

Intensity: see `to_uint8`. The Modality LUT (or Rescale Slope/Intercept) is applied first, then
the VOI LUT or window when the file has one (the radiographer's chosen display range), else the
range the header declares (Bits Stored, through the Modality LUT). The mapping never depends on
the picture's own min and max, so the same film gives the same grey levels whatever its format
(preprocess.py applies the same rule to 8- and 16-bit PNG and JPEG).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from pipeline.data import imagefile

HEADER_BUDGET = 1 << 20        # bytes of (inflated) header before Pixel Data
TRAILER_SLACK = 64 << 10       # bytes allowed after the pixel data of a deflated file
BYTES_PER_PIXEL_BUDGET = 2     # the pixel budget: max_pixels 16-bit samples, all frames together
_PIXEL_GROUP = 0x7FE0
_DEFLATED = "1.2.840.10008.1.2.1.99"


class DicomError(ValueError):
    """The DICOM file is refused; the message says why (preprocess turns it into InvalidImage)."""


@dataclass(frozen=True)
class DicomHeader:
    """What the input gate and the decoder need to know, read before any pixel is decoded."""
    modality: str
    body_part: str
    view_position: str
    photometric: str
    transfer_syntax: str
    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    patient_id: str

    @property
    def pixel_bytes(self) -> int:
        """Bytes of the whole decoded pixel data, every frame (bit-packed 1-bit data rounded up)."""
        return (self.frames * self.rows * self.columns * self.samples * self.bits_allocated + 7) // 8


def is_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def looks_like_headerless(data: bytes) -> bool:
    """Old DICOM files have no 128-byte preamble: they start with a group 0x0008 (or 0x0002) tag."""
    return len(data) > 8 and data[1:2] == b"\x00" and data[0:1] in (b"\x02", b"\x08")


class _Body:
    """The dataset bytes after the file meta: a slice of the upload, or a capped inflater."""

    def __init__(self, raw: memoryview, deflated: bool):
        self.raw, self.deflated = raw, deflated
        self.buf = bytearray()
        self._z = zlib.decompressobj(-zlib.MAX_WBITS) if deflated else None
        self._pending = bytes(raw) if deflated else b""
        self._done = not deflated

    def fill(self, limit: int) -> bytes:
        """Bytes of the body up to `limit` (all of them when shorter); inflates no further."""
        if not self.deflated:
            return bytes(self.raw[:limit])
        try:
            while len(self.buf) < limit and not self._done:
                src = self._z.unconsumed_tail or self._pending
                self._pending = b""
                chunk = self._z.decompress(src, limit - len(self.buf))
                self.buf += chunk
                self._done = self._z.eof or not (chunk or self._z.unconsumed_tail)
        except zlib.error as exc:
            raise DicomError(f"corrupt deflated DICOM: {exc}") from None
        return bytes(self.buf[:limit])

    def longer_than(self, n: int) -> bool:
        if not self.deflated:
            return len(self.raw) > n
        self.fill(n + 1)
        return len(self.buf) > n


def _encoding(meta, head: bytes) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the dataset, guessed as pydicom does without a syntax."""
    from pydicom.uid import UID
    from pydicom.values import converters

    ts = meta.get("TransferSyntaxUID")
    if ts is None:
        if len(head) < 6:
            return True, True
        group = int.from_bytes(head[:2], "little")
        vr = head[4:6].decode("latin-1")
        if vr in converters:
            return False, group < 1024
        return True, True
    uid = UID(ts)
    if not uid.is_transfer_syntax:
        return False, True  # an unknown syntax: encapsulated ones are explicit little endian
    return uid.is_implicit_VR, uid.is_little_endian


def _parse(data: bytes, force: bool):
    """-> (file meta, header dataset, body, implicit, little endian), no pixel data touched."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

    fp = DicomBytesIO(data)
    try:
        read_preamble(fp, force)
        meta = _read_file_meta_info(fp)
    except Exception as exc:
        raise DicomError(f"unreadable DICOM file meta: {exc}") from None
    start = fp.tell()
    body = _Body(memoryview(data)[start:], str(meta.get("TransferSyntaxUID", "")) == _DEFLATED)
    head = body.fill(HEADER_BUDGET)
    implicit, little = _encoding(meta, head)
    reached = []

    def at_pixels(tag, vr, length):
        if tag >> 16 == _PIXEL_GROUP:
            reached.append(tag)
            return True
        return False

    try:
        header = read_dataset(DicomBytesIO(head), implicit, little, stop_when=at_pixels)
    except Exception as exc:
        if not reached and body.longer_than(HEADER_BUDGET):
            raise DicomError(f"DICOM header over {HEADER_BUDGET >> 20} MB") from None
        raise DicomError(f"unreadable DICOM header: {exc}") from None
    if not reached:
        if body.longer_than(HEADER_BUDGET):
            raise DicomError(f"DICOM header over {HEADER_BUDGET >> 20} MB")
        raise DicomError("DICOM file without pixel data")
    return meta, header, body, implicit, little


def _int(ds, keyword: str, default: int) -> int:
    value = ds.get(keyword, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise DicomError(f"invalid {keyword}: {value!r}") from None


def _text(ds, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "").strip()
    except Exception:
        return ""


def _header(meta, ds) -> DicomHeader:
    return DicomHeader(
        modality=_text(ds, "Modality").upper(),
        body_part=_text(ds, "BodyPartExamined").upper(),
        view_position=_text(ds, "ViewPosition").upper(),
        photometric=_text(ds, "PhotometricInterpretation").upper() or "MONOCHROME2",
        transfer_syntax=str(meta.get("TransferSyntaxUID", "") or ""),
        rows=_int(ds, "Rows", 0), columns=_int(ds, "Columns", 0),
        frames=_int(ds, "NumberOfFrames", 1) or 1, samples=_int(ds, "SamplesPerPixel", 1),
        bits_allocated=_int(ds, "BitsAllocated", 16), bits_stored=_int(ds, "BitsStored", 0),
        signed=_int(ds, "PixelRepresentation", 0) == 1, patient_id=_text(ds, "PatientID"),
    )


@dataclass(frozen=True)
class Parsed:
    """A file parsed up to its Pixel Data, once: the header the gate reads, and where decode goes on."""
    header: DicomHeader
    meta: object
    body: "_Body"
    implicit: bool
    little: bool


def parse(data: bytes, force: bool = False) -> Parsed:
    """Parse an upload's header without decoding (or inflating) its pixel data; pass it on to decode."""
    def run() -> Parsed:
        meta, ds, body, implicit, little = _parse(data, force)
        return Parsed(_header(meta, ds), meta, body, implicit, little)
    return _guarded(run)


def read_header(data: bytes, force: bool = False) -> DicomHeader:
    return parse(data, force).header


def _guarded(fn):
    """Run fn; whatever a hostile file makes pydicom or a codec raise becomes DicomError."""
    try:
        return fn()
    except DicomError:
        raise
    except Exception as exc:  # lazily parsed values (UIDs, VRs...) can fail anywhere
        raise DicomError(f"unreadable DICOM: {type(exc).__name__}: {exc}"[:300]) from None
    except BaseException as exc:  # a Rust decoder's panic (pyo3 PanicException) is no Exception
        if type(exc).__name__ != "PanicException":
            raise
        raise DicomError(f"unreadable DICOM: the decoder failed on corrupt data ({exc})"[:300]) from None


def check_budget(h: DicomHeader, max_pixels: int, min_side: int) -> None:
    if h.rows <= 0 or h.columns <= 0:
        raise DicomError(f"DICOM without a valid size: {h.columns}x{h.rows}")
    if h.rows * h.columns > max_pixels:
        raise DicomError(f"decompression bomb: {h.columns}x{h.rows} = {h.rows * h.columns / 1e6:.0f} Mpx "
                         f"> {max_pixels / 1e6:.0f} Mpx limit")
    if min(h.rows, h.columns) < min_side:
        raise DicomError(f"image too small: {h.columns}x{h.rows} (minimum side {min_side} px)")
    if h.frames < 1 or h.samples not in (1, 3, 4) or h.bits_allocated not in (1, 8, 16, 32):
        raise DicomError(f"unsupported DICOM pixel layout: {h.frames} frames, {h.samples} samples, "
                         f"{h.bits_allocated} bits allocated")
    budget = max_pixels * BYTES_PER_PIXEL_BUDGET
    if h.pixel_bytes > budget:
        raise DicomError(f"decompression bomb: {h.frames} frames x {h.columns}x{h.rows} x {h.samples} "
                         f"samples x {h.bits_allocated} bits = {h.pixel_bytes / 2**20:.0f} MB decoded "
                         f"> {budget / 2**20:.0f} MB limit")


def _check_codestream(ds, h: DicomHeader, max_pixels: int) -> None:
    """A JPEG / JPEG-LS / JPEG 2000 frame must be what the header declares, with bounded work: the
    codec allocates and loops over what the codestream says, not what the DICOM header says."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import UID

    if not UID(ds.file_meta.TransferSyntaxUID).is_encapsulated:
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=h.frames))
    except Exception as exc:
        raise DicomError(f"corrupt encapsulated pixel data: {exc}") from None
    bits = h.bits_stored if 0 < h.bits_stored <= h.bits_allocated else h.bits_allocated
    try:
        imagefile.check_frame(frame, h.rows, h.columns, h.samples, bits, max_pixels)
    except imagefile.FileStructureError as exc:
        raise DicomError(str(exc)) from None


def decode(data: bytes, max_pixels: int, min_side: int, force: bool = False, parsed: Parsed | None = None) -> np.ndarray:
    """DICOM bytes -> uint8 [rows, cols] of the first frame (see `to_uint8` for the intensity).
    `parsed`: the same bytes' parse(), when the caller has already read the header."""
    return _guarded(lambda: _decode(data, max_pixels, min_side, parsed or parse(data, force)))


def _decode(data: bytes, max_pixels: int, min_side: int, parsed: Parsed) -> np.ndarray:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import pixel_array
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    h, meta, body, implicit, little = parsed.header, parsed.meta, parsed.body, parsed.implicit, parsed.little
    check_budget(h, max_pixels, min_side)
    if body.deflated:  # inflate what the header promises and no more
        limit = HEADER_BUDGET + h.pixel_bytes + TRAILER_SLACK
        content = body.fill(limit)
        if body.longer_than(limit):
            raise DicomError(f"deflated DICOM inflates past its declared size "
                             f"({limit / 2**20:.1f} MB): refused as a bomb")
        stream = DicomBytesIO(content)
    else:  # read from the upload itself: no copy of a file that may be 50 MB
        stream = DicomBytesIO(data)
        stream.seek(len(data) - len(body.raw))
    ds = read_dataset(stream, implicit, little)
    meta = FileMetaDataset(meta) if meta else FileMetaDataset()
    if body.deflated:  # the inflated bytes are plain explicit VR little endian
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    elif "TransferSyntaxUID" not in meta:  # an old file without meta header
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta = meta
    if "PixelData" not in ds:
        raise DicomError("DICOM file without pixel data")
    _check_codestream(ds, h, max_pixels)
    pixels = pixel_array(ds, index=0)  # the first frame only, whatever the frame count
    return to_uint8(pixels, ds, h)


def stored_range(h: DicomHeader) -> tuple[int, int]:
    bits = h.bits_stored if 0 < h.bits_stored <= h.bits_allocated else h.bits_allocated
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if h.signed else (0, (1 << bits) - 1)


def to_uint8(pixels: np.ndarray, ds, h: DicomHeader) -> np.ndarray:
    """The one intensity rule for DICOM (see the module docstring), -> uint8 with bone bright.

    Colour data (RGB after pydicom's YBR conversion) has no LUTs: its channels are averaged and
    scaled by their declared bit depth.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi

    if pixels.ndim == 3:
        lo, hi = stored_range(h)
        return _scale(pixels[..., :3].astype(np.float32).mean(axis=-1), lo, hi)
    values = apply_modality_lut(pixels, ds)
    if "VOILUTSequence" in ds:
        out = apply_voi(values, ds)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        img = _scale(out, 0, (1 << bits) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        img = _window(values, ds)
    else:
        lo, hi = stored_range(h)
        if ds.get("ModalityLUTSequence") or "RescaleSlope" in ds or "RescaleIntercept" in ds:
            ends = apply_modality_lut(np.array([lo, hi]), ds) if hi - lo > 1 << 16 else \
                apply_modality_lut(np.arange(lo, hi + 1, dtype=np.int64), ds)
            lo, hi = float(np.min(ends)), float(np.max(ends))
        img = _scale(values, lo, hi)
    if h.photometric == "MONOCHROME1":  # high values are dark: invert so bone is always bright
        img = 255 - img
    return img


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not hi > lo:
        raise DicomError(f"invalid DICOM value range {lo}..{hi}")
    return _to_uint8((np.array(values, np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo)))


def _to_uint8(out: np.ndarray) -> np.ndarray:
    """float32 grey levels -> uint8, in place (one float copy of a frame is the peak)."""
    np.nan_to_num(out, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    out += 0.5
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def _first(value) -> float:
    """Window Center/Width may hold several alternative views: the first is the default one."""
    try:
        return float(value if isinstance(value, (str, bytes, int, float)) else value[0])
    except (TypeError, ValueError, IndexError):
        raise DicomError(f"invalid window value {value!r}") from None


def _window(values: np.ndarray, ds) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing straight to 0..255 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    x = np.array(values, np.float32)
    if func == "SIGMOID":
        if width <= 0:
            raise DicomError(f"invalid window width {width}")
        out = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif func == "LINEAR_EXACT":
        if width <= 0:
            raise DicomError(f"invalid window width {width}")
        out = (x - center) / width * 255.0 + 127.5
    else:
        if width < 1:
            raise DicomError(f"invalid window width {width}")
        out = ((x - (center - 0.5)) / max(width - 1, 1e-9) + 0.5) * 255.0
    return _to_uint8(np.asarray(out, np.float32))
