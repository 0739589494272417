"""DICOM files made on the fly for the tests: one picture in every transfer syntax, bombs, multi-frame."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGExtended12Bit,
    JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless, generate_uid,
)

SYNTAXES = {  # name -> (transfer syntax, lossless)
    "explicit": (ExplicitVRLittleEndian, True),
    "deflate": (DeflatedExplicitVRLittleEndian, True),
    "rle": (RLELossless, True),
    "jpeg-extended-12bit": (JPEGExtended12Bit, False),
    "jpeg-lossless-sv1": (JPEGLosslessSV1, True),
    "jpeg-ls-lossless": (JPEGLSLossless, True),
    "jpeg-ls-near-lossless": (JPEGLSNearLossless, False),
    "jpeg2000-lossless": (JPEG2000Lossless, True),
    "jpeg2000-lossy": (JPEG2000, False),
}


def picture(size: int = 256) -> np.ndarray:
    """A smooth 0..1 float 'film': a ramp, a bright disc and a dark band (no flat image)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    img = 0.15 + 0.6 * x
    img[(x - 0.35) ** 2 + (y - 0.5) ** 2 < 0.04] = 0.95
    img[(y > 0.8) & (y < 0.9)] = 0.05
    return np.clip(img, 0, 1)


def dataset(pixels: np.ndarray, syntax=ExplicitVRLittleEndian, bits_stored: int = 12,
            photometric: str = "MONOCHROME2", frames: int = 1, **attrs) -> FileDataset:
    """A CR image dataset around `pixels` (uint16 [rows, cols]); PixelData left to the caller
    for encapsulated syntaxes."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition, ds.PatientID = "CR", "CHEST", "PA", "P-0001"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored = 1, 16, bits_stored
    ds.HighBit, ds.PixelRepresentation = bits_stored - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in attrs.items():
        setattr(ds, key, value)
    if not syntax.is_encapsulated:
        ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def encode(name: str, pixels: np.ndarray, bits_stored: int = 12) -> bytes:
    """`pixels` (uint16, `bits_stored` bits) as a DICOM file in the named transfer syntax."""
    import imagecodecs

    syntax, _ = SYNTAXES[name]
    ds = dataset(pixels, syntax, bits_stored)
    if name == "rle":
        ds.compress(RLELossless, pixels, encoding_plugin="pylibjpeg")
        return to_bytes(ds)
    if not syntax.is_encapsulated:
        return to_bytes(ds)
    frame = {
        "jpeg-extended-12bit": lambda: imagecodecs.jpeg8_encode(pixels, level=95, bitspersample=bits_stored),
        "jpeg-lossless-sv1": lambda: imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1,
                                                              bitspersample=bits_stored),
        "jpeg-ls-lossless": lambda: imagecodecs.jpegls_encode(pixels, level=0),
        "jpeg-ls-near-lossless": lambda: imagecodecs.jpegls_encode(pixels, level=3),
        "jpeg2000-lossless": lambda: imagecodecs.jpeg2k_encode(pixels, codecformat="J2K", reversible=True,
                                                               bitspersample=bits_stored),
        "jpeg2000-lossy": lambda: imagecodecs.jpeg2k_encode(pixels, level=40, codecformat="J2K",
                                                            reversible=False, bitspersample=bits_stored),
    }[name]()
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    if not SYNTAXES[name][1]:
        ds.LossyImageCompression = "01"
    return to_bytes(ds)


def multiframe_rle(frames: int, side: int) -> bytes:
    """`frames` RLE frames of side x side: frame 0 a ramp, the others its mirror image."""
    from pydicom.pixels.encoders import RLELosslessEncoder

    first = (picture(side) * 15).astype(np.uint16) * 4096 + 2048  # 16 steps: RLE packs it small
    ds = dataset(first, RLELossless, bits_stored=16, frames=frames)
    ds.PixelData = first.tobytes()  # the encoder reads the image description from the dataset
    ds.NumberOfFrames = 1
    encoded = [RLELosslessEncoder.encode(ds, encoding_plugin="pylibjpeg")]
    ds.PixelData = first[:, ::-1].copy().tobytes()
    encoded += [RLELosslessEncoder.encode(ds, encoding_plugin="pylibjpeg")] * (frames - 1)
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def deflate_bomb(inflated_mb: int = 200, rows: int = 512, columns: int = 512,
                 in_header: bool = False) -> bytes:
    """A deflated DICOM whose Pixel Data (or a private element before it, `in_header`) is
    `inflated_mb` MB of zeros, streamed through zlib so that building it costs no memory."""
    ds = dataset(np.zeros((1, 1), np.uint16), DeflatedExplicitVRLittleEndian)
    del ds.PixelData
    ds.Rows, ds.Columns = rows, columns
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    meta.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = io.BytesIO()
    plain = Dataset()
    plain.update(ds)
    plain.save_as(body, implicit_vr=False, little_endian=True, enforce_file_format=False)
    n = inflated_mb << 20
    tag = b"\x09\x00\x10\x10" if in_header else b"\xe0\x7f\x10\x00"  # (0009,1010) private / Pixel Data
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [meta.getvalue(), z.compress(body.getvalue() + tag + b"OB\0\0" + struct.pack("<I", n)),
           z.flush(zlib.Z_FULL_FLUSH)]
    # after a full flush a block depends on nothing before it: one compressed MB, repeated
    megabyte = z.compress(bytes(1 << 20)) + z.flush(zlib.Z_FULL_FLUSH)
    out += [megabyte] * inflated_mb
    if in_header:
        out.append(z.compress(b"\xe0\x7f\x10\x00OW\0\0" + struct.pack("<I", rows * columns * 2)
                              + bytes(rows * columns * 2)))
    out.append(z.flush())
    return b"".join(out)
