"""Decoding and validation of single files: every mode, every kind of bad file."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.data import preprocess
from pipeline.data.preprocess import InvalidImage


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(mode: str, size=(300, 200)) -> Image.Image:
    x = np.linspace(0, 1, size[0])[None, :].repeat(size[1], 0)
    if mode == "I;16":
        return Image.fromarray((x * 65535).astype(np.uint16))
    base = Image.fromarray((x * 255).astype(np.uint8), "L")
    if mode == "L":
        return base
    if mode == "P":
        return base.convert("P")
    return base.convert(mode)


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
                                      ("I;16", "PNG"), ("L", "JPEG"), ("RGB", "JPEG"), ("CMYK", "JPEG")])
def test_every_mode_becomes_the_same_grayscale_input(mode, fmt):
    arr = preprocess.load_array(encode(gradient(mode), fmt), 64)
    assert arr.shape == (64, 64) and arr.dtype == np.uint8
    # the same left-to-right gradient survives whatever the mode: dark left, bright right
    assert arr[:, :8].mean() < 60 and arr[:, -8:].mean() > 190


def test_rgba_alpha_is_composited_on_black():
    img = Image.new("RGBA", (100, 100), (255, 255, 255, 0))
    img.paste((255, 255, 255, 255), (50, 0, 100, 100))  # right half opaque white
    arr = preprocess.load_array(encode(img), 32)
    assert arr[:, :14].max() == 0 and arr[:, -14:].min() == 255


def test_sixteen_bit_scaled_by_declared_depth_not_min_max():
    """A 12-bit detector range stored in a 16-bit PNG stays dark: the PNG declares 16 bits."""
    x = np.linspace(0, 1, 300)[None, :].repeat(200, 0)
    arr = np.asarray(preprocess.load_image(encode(Image.fromarray((x * 4000 + 100).astype(np.uint16)))))
    assert arr.min() == round(100 / 257) and arr.max() == round(4100 / 257)


def test_preprocess_gives_normalised_tensor(shared_datasets):
    path = next((shared_datasets / "fullres_samples" / "NORMAL").iterdir())
    t = preprocess.preprocess(path, 96)
    assert tuple(t.shape) == (1, 96, 96)
    assert -3 < float(t.mean()) < 3
    # bytes and path go through the same path
    assert np.array_equal(preprocess.load_array(path.read_bytes(), 96), preprocess.load_array(path, 96))


def test_draft_decodes_large_jpeg_at_reduced_scale(shared_datasets):
    big = max((shared_datasets / "fullres_samples" / "PNEUMONIA").iterdir(), key=lambda p: p.stat().st_size)
    full = Image.open(big).size
    drafted = preprocess.load_image(big, draft_size=128)
    assert drafted.size[0] < full[0] and min(drafted.size) >= 128


def test_png_crc_corruption_is_reported():
    data = bytearray(encode(gradient("L")))
    data[60] ^= 0xFF  # inside the IDAT chunk
    with pytest.raises(InvalidImage) as err:
        preprocess.load_image(bytes(data))
    assert "corrupt" in err.value.reason or "not an image" in err.value.reason


@pytest.mark.parametrize("payload,reason", [
    (b"", "empty file"),
    (b"this is a text file, not an X-ray" * 10, "not an image"),
    (b"%PDF-1.4\n" + b"0" * 500, "unsupported format PDF"),
])
def test_non_images(payload, reason):
    with pytest.raises(InvalidImage, match=reason):
        preprocess.load_image(payload)


def test_truncated_jpeg():
    data = encode(gradient("L", (400, 400)), "JPEG", quality=90)
    with pytest.raises(InvalidImage, match="truncated"):
        preprocess.load_image(data[: len(data) // 2])


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (all zeros compress to almost nothing)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = zlib.compress(b"\x00" * (width + 1) * 16, 9)  # only a few rows: never decoded anyway
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_decompression_bomb_rejected_before_decoding():
    bomb = _bomb_png(30000, 30000)  # 900 Mpx claimed, a few KB on disk
    assert len(bomb) < 100_000
    with pytest.raises(InvalidImage, match="decompression bomb"):
        preprocess.load_image(bomb)


def test_huge_file_rejected_without_reading(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(60 * 2**20)
    with pytest.raises(InvalidImage, match="too large"):
        preprocess.load_image(big)


def test_too_small_and_blank_images():
    with pytest.raises(InvalidImage, match="too small"):
        preprocess.load_image(encode(Image.new("L", (20, 20))))
    for blank in (Image.new("I;16", (100, 100)), Image.new("L", (100, 100), 128)):
        with pytest.raises(InvalidImage, match="blank"):
            preprocess.load_image(encode(blank))


def test_unsupported_format():
    with pytest.raises(InvalidImage, match="unsupported format"):
        preprocess.load_image(encode(gradient("L"), "BMP"))


def test_dicom_monochrome1_is_inverted(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def dicom(photometric: str) -> bytes:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        pixels = (np.linspace(0, 1, 128)[None, :].repeat(128, 0) * 4095).astype(np.uint16)
        ds.Rows, ds.Columns = pixels.shape
        ds.PhotometricInterpretation = photometric
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
        ds.PixelData = pixels.tobytes()
        path = tmp_path / f"{photometric}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path.read_bytes()

    mono2 = preprocess.load_array(dicom("MONOCHROME2"), 64)
    mono1 = preprocess.load_array(dicom("MONOCHROME1"), 64)
    assert mono2[:, -4:].mean() > 200 and mono1[:, -4:].mean() < 55  # MONOCHROME1: high values are dark


def test_dicom_without_preamble_is_read(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    pixels = (np.linspace(0, 1, 96)[None, :].repeat(96, 0) * 1000).astype(np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 10, 9, 0
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "old.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)  # no preamble: an old file
    data = path.read_bytes()
    assert data[128:132] != b"DICM" and data[:2] == b"\x08\x00"
    arr = preprocess.load_array(data, 48)
    assert arr[:, :4].mean() < 40 and arr[:, -4:].mean() > 210


def test_numpy_model_input_is_torchs_to_the_bit(shared_datasets):
    """The serving tier prepares the network's input in numpy (no torch there), training in torch:
    the same numbers, on real films and on one using few grey levels."""
    import torch

    files = sorted((shared_datasets / "chest_xray" / "train" / "PNEUMONIA").glob("*.jpeg"))[:6]
    arrays = np.stack([preprocess.load_array(f, 160) for f in files])
    arrays[1] //= 7
    for mode in preprocess.INTENSITY_MODES:
        expected = preprocess.model_input(torch.from_numpy(arrays)[:, None], mode).numpy()
        got = preprocess.model_input_arrays(arrays, mode)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.array_equal(got, expected), mode


def test_gate_statistics_in_numpy_match_torchs_pooling(shared_datasets):
    """The gate's layout thumbnails and texture statistics (numpy, pipeline.inference.gate) are the
    torch operations the fitted gates were fitted with: adaptive average pooling, ceil-mode 2x2
    pooling and nearest upsampling, also at sizes that do not divide evenly."""
    import torch
    import torch.nn.functional as F

    from pipeline.inference import gate

    files = sorted((shared_datasets / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))[:4]
    for size in (160, 100):
        arrays = np.stack([preprocess.load_array(f, size) for f in files])
        x = preprocess.equalize(torch.from_numpy(arrays).float()[:, None])
        thumbs = (F.adaptive_avg_pool2d(x, gate.LAYOUT_SIDE).reshape(len(arrays), -1) / 255.0).numpy()
        assert np.abs(gate.layout_thumbnails(arrays) - thumbs).max() < 1e-5
        level, energies = x / 255.0, []
        for _ in range(gate.TEXTURE_LEVELS):
            low = F.avg_pool2d(level, 2, ceil_mode=True)
            band = level - F.interpolate(low, scale_factor=2, mode="nearest")[..., :level.shape[-2], :level.shape[-1]]
            energies.append(torch.log(band.square().mean((1, 2, 3)) + 1e-8))
            level = low
        stats = gate.texture_stats(arrays)
        assert np.abs(stats[:, :gate.TEXTURE_LEVELS] - torch.stack(energies, 1).numpy()).max() < 1e-4
