"""Controlled acquisition shifts: the stress set that promotion and the model card rest on.

Doctors' X-rays come from other machines and other years than the training drop: other exposure and
contrast, other detectors and post-processing, other resolutions and compression, other file formats.
The stress evaluation re-encodes the held-out patients' images under each such shift and feeds the
resulting *file bytes* through the one preprocessing path (`preprocess.load_array`), exactly as an
upload would be. Each family comes at two strengths; every random choice is seeded by
(seed, shift, image), so a stress set is the same set every time it is built.

A shift maps an 8-bit grayscale source image (uint8 [H, W], as decoded from the dataset) to bytes:
lossless PNG unless the shift is itself about encoding (JPEG quality, 16-bit PNG, DICOM).
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from pipeline.data import imagefile

STRENGTHS = ("mild", "strong")


@dataclass(frozen=True)
class Shift:
    family: str
    strength: str
    value: float | str         # the family's parameter at this strength (documented in FAMILIES)
    encode: Callable[[np.ndarray, float | str, np.random.Generator], bytes]

    @property
    def name(self) -> str:
        return f"{self.family}:{self.strength}"

    def rng(self, seed: int, image_key: str) -> np.random.Generator:
        """Per (seed, shift, image) generator: the same image gets the same shift every time."""
        return np.random.default_rng([seed, zlib.crc32(self.name.encode()), zlib.crc32(image_key.encode())])

    def apply(self, pixels: np.ndarray, seed: int = 0, image_key: str = "") -> bytes:
        return self.encode(np.asarray(pixels, np.uint8), self.value, self.rng(seed, image_key))


# ----------------------------------------------------------------------------- encoders
def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _gamma(a, g, rng):
    """Exposure / tone: x -> x**g on [0, 1]; g or 1/g at random (darker or brighter mid-tones)."""
    g = float(g) ** _sign(rng)
    return png(255.0 * (a / 255.0) ** g)


def _contrast(a, c, rng):
    """Window width: stretch or flatten around the image mean by a factor 1 +- c."""
    f = 1.0 + float(c) * _sign(rng)
    return png((a - a.mean()) * f + a.mean())


def _gradient(a, s, rng):
    """Detector field non-uniformity (anode heel effect): a linear gain ramp +-s across the image
    in a random direction."""
    h, w = a.shape
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = (np.cos(theta) * (xx / max(1, w - 1) - 0.5) + np.sin(theta) * (yy / max(1, h - 1) - 0.5)) * 2
    return png(a * (1.0 + float(s) * ramp))


def _blurred(a: np.ndarray, sigma: float) -> np.ndarray:
    img = Image.fromarray(a.astype(np.uint8), mode="L").filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(img, np.float64)


def _unsharp(a, amount, rng):
    """Vendor post-processing: unsharp-mask edge enhancement (radius 2 px) by `amount`."""
    return png(a + float(amount) * (a - _blurred(a, 2.0)))


def _blur(a, sigma, rng):
    """A softer detector / scatter: Gaussian blur of `sigma` source pixels."""
    return png(_blurred(a, float(sigma)))


def _noise(a, sigma, rng):
    """Quantum noise of a lower dose: additive Gaussian noise, `sigma` grey levels."""
    return png(a + rng.normal(0.0, float(sigma), a.shape))


def _downscale(a, factor, rng):
    """A coarser detector or an archive's thumbnail: down by `factor`, back up (bilinear)."""
    h, w = a.shape
    img = Image.fromarray(a, mode="L")
    small = img.resize((max(8, round(w * float(factor))), max(8, round(h * float(factor)))), Image.BILINEAR)
    return png(np.asarray(small.resize((w, h), Image.BILINEAR)))


def _equalize(a, weight, rng):
    """Vendor tone mapping: histogram equalisation blended in with `weight` (1 = fully equalised)."""
    eq = np.asarray(ImageOps.equalize(Image.fromarray(a, mode="L")), np.float64)
    return png(float(weight) * eq + (1 - float(weight)) * a)


def _zoom(a, f, rng):
    """Field of view / collimation: the anatomy fills more (zoom in, crop) or less (zoom out,
    margins of the film's edge values) of the picture by a factor 1 +- f."""
    h, w = a.shape
    img = Image.fromarray(a, mode="L")
    if _sign(rng) > 0:  # zoom in: crop the centre
        dw, dh = round(w * f / 2), round(h * f / 2)
        return png(np.asarray(img.crop((dw, dh, w - dw, h - dh)).resize((w, h), Image.BILINEAR)))
    small = img.resize((round(w / (1 + f)), round(h / (1 + f))), Image.BILINEAR)
    out = Image.new("L", (w, h), int(np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]))))
    out.paste(small, ((w - small.width) // 2, (h - small.height) // 2))
    return png(np.asarray(out))


def _border(a, f, rng):
    """Detector format: black bars (letterboxing) of total width `f` of the side, left-right or
    top-bottom, as when a film of another aspect ratio is exported to a fixed matrix."""
    h, w = a.shape
    img = Image.fromarray(a, mode="L")
    if rng.random() < 0.5:
        pad = round(w * f / 2)
        img = ImageOps.expand(img, (pad, 0, pad, 0), fill=0)
    else:
        pad = round(h * f / 2)
        img = ImageOps.expand(img, (0, pad, 0, pad), fill=0)
    return png(np.asarray(img))


def _rotate(a, degrees, rng):
    """Patient positioning: rotated by +-`degrees` (edges filled with the film's border values)."""
    img = Image.fromarray(a, mode="L")
    fill = int(np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])))
    return png(np.asarray(img.rotate(float(degrees) * _sign(rng), Image.BILINEAR, fillcolor=fill)))


def _jpeg(a, quality, rng):
    """Lossy re-compression (PACS export, e-mail): JPEG at `quality`."""
    buf = io.BytesIO()
    Image.fromarray(a, mode="L").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def _png16(a, bits, rng):
    """The 16-bit decode path: the same picture stored with `bits` significant bits in a 16-bit PNG,
    unscaled, with the sBIT chunk that says so (as a 12-bit exporter writes it: imagefile)."""
    top = 2 ** int(bits) - 1
    buf = io.BytesIO()
    Image.fromarray(np.rint(a.astype(np.float64) * top / 255.0).astype(np.uint16)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue() if int(bits) >= 16 else imagefile.with_significant_bits(buf.getvalue(), int(bits))


def _dicom(a, photometric, rng):
    """The DICOM decode path: 12-bit CR stored MONOCHROME2, or MONOCHROME1 (bright = less attenuation,
    the decoder must invert), with a rescale slope/intercept the decoder must apply."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stored = np.rint(a.astype(np.float64) * 4095 / 255.0)
    if photometric == "MONOCHROME1":
        stored = 4095 - stored
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"      # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "AP"
    ds.Rows, ds.Columns = a.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, str(photometric)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = stored.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# family -> (encoder, mild value, strong value). Strengths are chosen so that "mild" is what two
# well-kept machines differ by and "strong" what a radiologist would still read without complaint.
FAMILIES: dict[str, tuple[Callable, float | str, float | str]] = {
    "gamma": (_gamma, 1.25, 2.0),
    "contrast": (_contrast, 0.2, 0.4),
    "gradient": (_gradient, 0.1, 0.25),
    "unsharp": (_unsharp, 0.7, 1.5),
    "equalize": (_equalize, 0.5, 1.0),
    "blur": (_blur, 1.0, 2.5),
    "noise": (_noise, 4.0, 10.0),
    "downscale": (_downscale, 0.5, 0.3),
    "jpeg": (_jpeg, 40, 15),
    "zoom": (_zoom, 0.08, 0.16),
    "border": (_border, 0.12, 0.3),
    "rotate": (_rotate, 5.0, 10.0),
    "png16": (_png16, 16, 12),
    "dicom": (_dicom, "MONOCHROME2", "MONOCHROME1"),
}


def stress_shifts(families: list[str] | None = None) -> list[Shift]:
    """Every shift of the stress set (all families at both strengths, or the named families)."""
    names = list(FAMILIES) if not families else families
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown shift families {unknown}; known: {', '.join(FAMILIES)}")
    return [Shift(f, s, FAMILIES[f][1 + i], FAMILIES[f][0]) for f in names for i, s in enumerate(STRENGTHS)]
