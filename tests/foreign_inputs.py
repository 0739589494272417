"""Inputs that are not frontal chest X-rays, made on the fly (nothing stored in git): procedural
colour and grey photos, a logo, a text page, a drawing, pictures shipped by matplotlib, CT/MR
DICOMs shipped by pydicom, a generated nuclear-medicine DICOM, real X-rays turned the wrong way,
and real photographs shipped by scikit-image and matplotlib, in grey, cropped and resized
(`scene_photos`: a tuning half and a held-out half that no threshold or rule was chosen on).

Each maker returns (file name, bytes), as a doctor would upload them.
"""
from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def flower(side: int = 480, seed: int = 1) -> Image.Image:
    """A colour 'photo' of a flower: green blurred background, red petals, yellow heart, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    bg = np.stack([40 + 60 * yy, 110 + 80 * xx, 40 + 30 * yy], -1)
    img = Image.fromarray(bg.astype(np.uint8)).filter(ImageFilter.GaussianBlur(8))
    draw = ImageDraw.Draw(img)
    c = side // 2
    for k in range(8):
        a = k * np.pi / 4
        x, y = c + side * 0.2 * np.cos(a), c + side * 0.2 * np.sin(a)
        draw.ellipse([x - side * 0.12, y - side * 0.12, x + side * 0.12, y + side * 0.12], fill=(210, 30, 60))
    draw.ellipse([c - side * 0.1, c - side * 0.1, c + side * 0.1, c + side * 0.1], fill=(240, 200, 20))
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)), np.float32) + rng.normal(0, 6, (side, side, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def building(width: int = 480, height: int = 600, seed: int = 2) -> Image.Image:
    """A colour 'photo' of a building: blue sky, a facade with rows of windows, a street."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (120, 170, 230))
    draw = ImageDraw.Draw(img)
    draw.rectangle([60, 120, width - 60, height - 60], fill=(190, 150, 110))
    for row in range(150, height - 100, 55):
        for col in range(85, width - 100, 60):
            draw.rectangle([col, row, col + 35, row + 38], fill=(60, 70, 90))
    draw.rectangle([0, height - 60, width, height], fill=(90, 90, 90))
    arr = np.asarray(img, np.float32) + rng.normal(0, 5, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))


def text_page(side: int = 500) -> Image.Image:
    img = Image.new("L", (side, int(side * 1.3)), 250)
    draw = ImageDraw.Draw(img)
    for i in range(24):
        draw.text((30, 20 + i * 26), "Discharge letter: patient seen in clinic, chest clear. " * 2, fill=20)
    return img


def drawing(side: int = 400) -> Image.Image:
    img = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(img)
    draw.ellipse([60, 60, 340, 340], outline=0, width=6)
    draw.line([100, 300, 300, 100], fill=0, width=8)
    draw.rectangle([150, 150, 250, 250], fill=120)
    return img


def logo(side: int = 360) -> Image.Image:
    """A software-style logo: coloured rounded shape and lettering on transparency (RGBA PNG)."""
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle([20, 20, side - 20, side - 20], radius=60, fill=(30, 120, 220, 255))
    draw.ellipse([90, 90, side - 90, side - 90], fill=(255, 200, 0, 255))
    draw.text((side // 2 - 30, side // 2 - 6), "LOGO", fill=(255, 255, 255, 255))
    return img


def _matplotlib_sample(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / name


def nm_dicom(rows: int = 512, cols: int = 192) -> bytes:
    """A nuclear-medicine whole-body DICOM (tall, blobby uptake), written with pydicom."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    yy, xx = np.mgrid[0:rows, 0:cols]
    body = np.exp(-((xx - cols / 2) / (cols / 5)) ** 2) * (yy > 30)
    hot = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 60) for x, y in ((96, 60), (80, 200), (110, 330)))
    pixels = (800 * body + 3000 * hot).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined = "NM", "WHOLEBODY"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def xray_dicom(xray: Image.Image, view: str = "PA", modality: str = "DX") -> bytes:
    """A real X-ray wrapped as a DICOM with the given ViewPosition (lateral views are warned)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.asarray(xray.convert("L"), np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, "CHEST", view
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def foreign() -> dict[str, tuple[str, bytes]]:
    """{class: (file name, bytes)} of inputs that must be refused, none needing the dataset."""
    import pydicom.data

    hopper = Image.open(_matplotlib_sample("grace_hopper.jpg")).convert("RGB")
    return {
        "colour photo (flower)": ("flower.jpg", _encode(flower(), "JPEG")),
        "colour photo (building)": ("building.jpg", _encode(building(), "JPEG")),
        "colour photo (portrait, matplotlib)": ("hopper.jpg", _encode(hopper, "JPEG")),
        "logo PNG": ("logo.png", _encode(logo(), "PNG")),
        "logo PNG (matplotlib)": ("mpl-logo.png", _matplotlib_sample("logo2.png").read_bytes()),
        "text page": ("letter.png", _encode(text_page(), "PNG")),
        "drawing": ("drawing.png", _encode(drawing(), "PNG")),
        "CT DICOM": ("ct.dcm", Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes()),
        "MR DICOM": ("mr.dcm", Path(pydicom.data.get_testdata_file("MR_small.dcm")).read_bytes()),
        "NM DICOM": ("nm.dcm", nm_dicom()),
    }


def grey_photos() -> dict[str, tuple[str, bytes]]:
    """The same photos in grey: no colour left, only the learned gate can tell."""
    hopper = Image.open(_matplotlib_sample("grace_hopper.jpg")).convert("L")
    return {
        "grey photo (flower)": ("flower-grey.jpg", _encode(flower().convert("L"), "JPEG")),
        "grey photo (building)": ("building-grey.jpg", _encode(building().convert("L"), "JPEG")),
        "grey photo (portrait, matplotlib)": ("hopper-grey.jpg", _encode(hopper, "JPEG")),
    }


# Real photographs (and a few other non-chest pictures) shipped inside the scikit-image and matplotlib
# wheels: no download. Split once, by a seeded draw over the sorted names, before anything was
# measured on them: the gate's scene check was designed and tuned on TUNING only; HELD_OUT is the
# honest test (docs/benchmarks.md reports both).
SCENE_SOURCES = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "face",
                 "grass", "gravel", "hopper", "hubble", "ihc", "microaneurysms", "minduka", "moon",
                 "motorcycle", "mri", "page", "retina", "rocket", "terrain", "text")
_ORDER = [SCENE_SOURCES[i] for i in np.random.default_rng(25).permutation(len(SCENE_SOURCES))]
TUNING, HELD_OUT = tuple(sorted(_ORDER[:12])), tuple(sorted(_ORDER[12:]))
# Added after the scene check was designed and measured once, untouched since: scikit-learn's two
# bundled photographs (a temple, a flower), a second held-out set.
FRESH = ("temple", "dahlia")


def scene_source(name: str) -> Image.Image:
    """One shipped picture as a grey "L" image."""
    if name in ("hopper", "minduka"):
        file = {"hopper": "grace_hopper.jpg", "minduka": "Minduka_Present_Blue_Pack.png"}[name]
        return Image.open(_matplotlib_sample(file)).convert("RGB").convert("L")
    if name == "mri":  # a 256x256 16-bit big-endian MR slice of a head
        import gzip

        raw = np.frombuffer(gzip.decompress(_matplotlib_sample("s1045.ima.gz").read_bytes()), ">u2")
        return Image.fromarray(_to_uint8(raw.reshape(256, 256).astype(np.float32)))
    if name == "terrain":  # a shaded elevation model: an aerial-looking relief
        with np.load(_matplotlib_sample("jacksboro_fault_dem.npz")) as dem:
            return Image.fromarray(_to_uint8(dem["elevation"].astype(np.float32)))
    if name in FRESH:
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image({"temple": "china.jpg", "dahlia": "flower.jpg"}[name])).convert("L")
    import skimage.data

    if name == "face":
        return Image.fromarray(_to_uint8(skimage.data.lfw_subset()[7])).resize((250, 250), Image.Resampling.BICUBIC)
    if name == "motorcycle":
        return Image.fromarray(skimage.data.stereo_motorcycle()[0]).convert("L")
    loader = {"hubble": "hubble_deep_field", "ihc": "immunohistochemistry"}.get(name, name)
    arr = getattr(skimage.data, loader)()
    return Image.fromarray(arr).convert("RGB").convert("L") if arr.ndim == 3 else Image.fromarray(arr)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(x, (0.5, 99.5))
    return (np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def scene_photos(names: tuple[str, ...] = TUNING) -> dict[str, tuple[str, bytes]]:
    """Each named picture in grey, as a doctor might upload it: whole (PNG and JPEG), a centre crop,
    a film-shaped portrait crop enlarged to 1024 px, a left part, and a small copy."""
    out = {}
    for name in names:
        img = scene_source(name)
        w, h = img.size
        film_w = min(w, int(h / 1.25))
        film = img.crop(((w - film_w) // 2, 0, (w - film_w) // 2 + film_w, min(h, int(film_w * 1.25))))
        scale = 128 / min(w, h)
        variants = {
            "full.png": (img, "PNG"),
            "full.jpg": (img, "JPEG"),
            "centre.jpg": (img.crop((w * 15 // 100, h * 15 // 100, w * 85 // 100, h * 85 // 100)), "JPEG"),
            "film.jpg": (film.resize((int(1024 / 1.25), 1024), Image.Resampling.BICUBIC), "JPEG"),
            "left.png": (img.crop((0, 0, w * 6 // 10, h)), "PNG"),
            "small.jpg": (img.resize((max(64, round(w * scale)), max(64, round(h * scale))),
                                     Image.Resampling.LANCZOS), "JPEG"),
        }
        for variant, (picture, fmt) in variants.items():
            out[f"grey photo ({name}, {variant})"] = (f"{name}-{variant}", _encode(picture, fmt))
    return out


def misoriented(xray: Image.Image) -> dict[str, tuple[str, bytes]]:
    """A real chest film turned the wrong way, as JPEG."""
    xray = xray.convert("L")
    return {
        "rotated 90": ("rot90.jpg", _encode(xray.transpose(Image.Transpose.ROTATE_90), "JPEG")),
        "rotated 180": ("rot180.jpg", _encode(xray.transpose(Image.Transpose.ROTATE_180), "JPEG")),
        "rotated 270": ("rot270.jpg", _encode(xray.transpose(Image.Transpose.ROTATE_270), "JPEG")),
        "flipped top to bottom": ("vflip.jpg", _encode(xray.transpose(Image.Transpose.FLIP_TOP_BOTTOM), "JPEG")),
        "inverted (MONOCHROME1 read as 2)": ("inverted.jpg", _encode(ImageOps.invert(xray), "JPEG")),
    }


def at_production_margin(gate, params, monkeypatch) -> None:
    """The gate's distance limit as production fits it (margin 1.0), without the widening
    (params gate.distance_margin) that the test session's 1-epoch model and ~30 validation films
    need so that real films pass: the foreign-input tests judge the gate at production's rule."""
    margin = params.gate.distance_margin
    monkeypatch.setattr(gate, "max_distance", gate.max_distance / margin)
    monkeypatch.setattr(gate, "max_layout", gate.max_layout / margin)
    monkeypatch.setattr(gate, "max_texture", gate.max_texture / margin)
