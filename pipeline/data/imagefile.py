"""JPEG and PNG files read as structures, before any pixel is decoded.

An upload is untrusted: what a codec will cost is read from the file's own markers and chunks
first, and refused when it is out of budget (the counterpart of dicom.py's header checks):
- JPEG: the frame header (size, components, precision) and the number of scans. A progressive
  JPEG can repeat cheap "no-op" scans thousands of times; each one makes the decoder walk every
  block of the image, so 500 KB can cost minutes of CPU. Scans x pixels is bounded.
- PNG: the header, and sBIT (how many bits of a 16-bit sample are significant).
- `strip`: what the site keeps of an upload, the pixels and nothing else. EXIF, XMP, ICC,
  comments and PNG text chunks can hold patient identifiers (scanners and phones write names,
  dates, places); bytes after the end of the image can hold anything. Only the segments a decoder
  needs are copied, byte for byte (no re-compression, so the pixels stay exactly as uploaded),
  plus an orientation tag where the file had one, since it decides how the film is shown.
"""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

MAX_SCANS = 32                 # libjpeg's progressive modes write 6-10 scans, mozjpeg ~13
SCAN_PIXEL_BUDGET = 16         # scans x pixels <= this x the pixel limit (16 full-size scans)
# the segments a JPEG decoder needs: SOF0-15 (less the DHT/JPG/DAC codes), DHT, DAC, DQT, DRI,
# DNL, SOS; APP14 "Adobe" says whether 3/4 components are transformed (RGB vs YCbCr, CMYK vs YCCK)
_JPEG_KEEP = {0xC4, 0xCC, 0xDB, 0xDD, 0xDC} | {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)}
_SOF = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)}
_SOF_LS = 0xF7  # JPEG-LS (DICOM's 1.2.840.10008.1.2.4.80/81): same frame header
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # in entropy data: FF00 is a stuffed FF, RSTn go on
_NEXT_MARKER_LS = re.compile(rb"\xff[\x80-\xcf\xd8-\xfe]")  # JPEG-LS stuffs a 0 bit: FF then < 0x80 is data
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEEP = {b"IHDR", b"PLTE", b"tRNS", b"sBIT", b"IDAT", b"IEND"}


class FileStructureError(ValueError):
    """The file's structure is refused; the message says why (callers make it an InvalidImage)."""


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    components: int
    precision: int
    progressive: bool
    scans: int


def jpeg_info(data: bytes) -> JpegInfo:
    """The frame header and scan count of a JPEG codestream, by walking its markers (no decoding)."""
    if data[:2] != b"\xff\xd8":
        raise FileStructureError("not a JPEG codestream")
    frame, scans, pos = None, 0, 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise FileStructureError(f"corrupt JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if marker in (0x01, *range(0xD0, 0xD8)):  # stand-alone markers
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > len(data):
            raise FileStructureError("corrupt or truncated JPEG segment")
        if (marker in _SOF or marker == _SOF_LS) and frame is None and length >= 8:
            precision, height, width, components = struct.unpack(">BHHB", data[pos + 4:pos + 10])
            frame = (width, height, components, precision, marker in (0xC2, 0xC6, 0xCA, 0xCE))
            next_marker = _NEXT_MARKER_LS if marker == _SOF_LS else _NEXT_MARKER
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next real marker
            scans += 1
            found = (next_marker if frame else _NEXT_MARKER).search(data, pos)
            pos = found.start() if found else len(data)
    if frame is None:
        raise FileStructureError("corrupt JPEG: no frame header")
    return JpegInfo(*frame[:4], progressive=frame[4], scans=scans)


def check_jpeg(info: JpegInfo, max_pixels: int) -> None:
    """Refuse a codestream whose scans would cost more than SCAN_PIXEL_BUDGET full decodes."""
    pixels = max(1, info.width * info.height)
    if info.scans > MAX_SCANS or info.scans * pixels > SCAN_PIXEL_BUDGET * max_pixels:
        raise FileStructureError(
            f"JPEG with {info.scans} scans of {info.width}x{info.height} px: refused, decoding it would "
            f"cost over {SCAN_PIXEL_BUDGET} full decodes (at most {MAX_SCANS} scans)")


def png_chunks(data: bytes):
    """(type, payload, start, end) of each chunk of a PNG file, up to IEND (CRCs not checked here:
    the decoder checks them)."""
    if not data.startswith(_PNG_SIGNATURE):
        raise FileStructureError("not a PNG file")
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise FileStructureError("corrupt or truncated PNG chunk")
        yield kind, data[pos + 8:pos + 8 + length], pos, end
        if kind == b"IEND":
            return
        pos = end


def png_significant_bits(data: bytes) -> int | None:
    """sBIT of a greyscale PNG (the significant bits of each sample), None when absent. It comes
    before the image data, so only the chunks ahead of the first IDAT are read."""
    for kind, payload, _, _ in png_chunks(data):
        if kind == b"sBIT" and payload:
            return payload[0]
        if kind == b"IDAT":
            return None
    return None


def with_significant_bits(png: bytes, bits: int) -> bytes:
    """A PNG with an sBIT chunk saying `bits` bits of each (grey) sample are significant, as a
    12-bit exporter writes it. sBIT must precede the image data: it goes right after IHDR."""
    ihdr_end = len(_PNG_SIGNATURE) + 25
    return png[:ihdr_end] + _png_chunk(b"sBIT", bytes([bits])) + png[ihdr_end:]


def strip(data: bytes, fmt: str, orientation: int = 1) -> bytes:
    """The upload without metadata (see the module docstring); `orientation` (EXIF 1-8) is kept."""
    return assemble(data, strip_plan(data, fmt, orientation))


def strip_plan(data: bytes, fmt: str, orientation: int = 1) -> list[tuple[int, int] | bytes]:
    """strip() as its pieces in order: (start, end) ranges of `data`, and the few new bytes (markers,
    an orientation tag). A decoder process answers with this plan instead of the file: a few hundred
    bytes to send back, where a 400 kB film cost ~0.4 ms."""
    return _strip_jpeg(data, orientation) if fmt == "JPEG" else _strip_png(data, orientation)


def assemble(data: bytes, plan: list[tuple[int, int] | bytes]) -> bytes:
    return b"".join(data[piece[0]:piece[1]] if isinstance(piece, tuple) else piece for piece in plan)


def _exif_orientation(orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = int(orientation)
    return exif.tobytes()  # b"Exif\0\0" + a TIFF header holding that one tag


def _strip_jpeg(data: bytes, orientation: int) -> list[tuple[int, int] | bytes]:
    out = [b"\xff\xd8"]
    if orientation != 1:
        app1 = _exif_orientation(orientation)
        out.append(b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1)
    pos = 2
    while pos + 4 <= len(data):
        marker = data[pos + 1]
        if data[pos] != 0xFF or marker == 0xD9:
            break
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            out.append((pos, pos + 2))
            pos += 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _JPEG_KEEP or marker == 0xDA or (marker == 0xEE and data[pos + 4:pos + 9] == b"Adobe"):
            out.append((pos, end))
        pos = end
        if marker == 0xDA:
            found = _NEXT_MARKER.search(data, pos)
            stop = found.start() if found else len(data)
            out.append((pos, stop))
            pos = stop
    out.append(b"\xff\xd9")
    return out


def _strip_png(data: bytes, orientation: int) -> list[tuple[int, int] | bytes]:
    out = [_PNG_SIGNATURE]
    for kind, _, start, end in png_chunks(data):
        if kind in _PNG_KEEP:
            if kind == b"IDAT" and orientation != 1:  # eXIf must come before the image data
                exif = _exif_orientation(orientation)[6:]  # eXIf holds the TIFF data without "Exif\0\0"
                out.append(_png_chunk(b"eXIf", exif))
                orientation = 1
            out.append((start, end))
    return out


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


MAX_J2K_TILES = 4096


def check_frame(frame: bytes, rows: int, columns: int, samples: int, bits: int, max_pixels: int) -> None:
    """A compressed DICOM frame (JPEG family or JPEG 2000) must be what its header declares: size,
    components, bit depth; and its work bounded (scans, tiles). Raises FileStructureError."""
    if frame[:2] == b"\xff\xd8":
        try:
            info = jpeg_info(frame)
            check_jpeg(info, max_pixels)
        except FileStructureError as exc:
            raise FileStructureError(f"compressed frame: {exc}") from None
        if (info.height, info.width) != (rows, columns):
            raise FileStructureError(f"compressed frame is {info.width}x{info.height}, header says {columns}x{rows}")
        if info.components != samples:
            raise FileStructureError(f"compressed frame has {info.components} components, header says {samples} samples")
        return
    j2k = frame.find(b"\xff\x4f\xff\x51", 0, 256)  # SOC + SIZ (a JP2 box header may precede it)
    if j2k >= 0:
        _check_siz(frame[j2k + 4:], rows, columns, samples, bits)


def _check_siz(siz: bytes, rows: int, columns: int, samples: int, bits: int) -> None:
    """JPEG 2000 SIZ marker segment (ISO 15444-1 A.5.1): image and tile geometry, then per component
    its depth. Components must equal SamplesPerPixel, depth must not exceed BitsStored."""
    if len(siz) < 38:
        raise FileStructureError("corrupt JPEG 2000 codestream: SIZ marker truncated")
    x1, y1, x0, y0, tw, th, tx0, ty0 = struct.unpack(">8I", siz[4:36])
    components = int.from_bytes(siz[36:38], "big")
    if (y1 - y0, x1 - x0) != (rows, columns):
        raise FileStructureError(f"compressed frame is {x1 - x0}x{y1 - y0}, header says {columns}x{rows}")
    if components != samples:
        raise FileStructureError(f"JPEG 2000 frame declares {components} components, header says {samples} samples")
    if len(siz) < 38 + 3 * components:
        raise FileStructureError("corrupt JPEG 2000 codestream: SIZ marker truncated")
    depth = max((siz[38 + 3 * c] & 0x7F) + 1 for c in range(components))
    if depth > bits:
        raise FileStructureError(f"JPEG 2000 frame declares {depth}-bit samples, header says {bits} bits stored")
    if tw == 0 or th == 0 or tx0 > x0 or ty0 > y0:
        raise FileStructureError("corrupt JPEG 2000 codestream: invalid tile grid")
    tiles = -(-(x1 - tx0) // tw) * -(-(y1 - ty0) // th)
    if tiles > MAX_J2K_TILES:
        raise FileStructureError(f"JPEG 2000 frame of {tiles} tiles (at most {MAX_J2K_TILES}): refused")
