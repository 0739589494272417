"""DICOM uploads: bombs refused cheaply, one frame decoded, hospital syntaxes read, one intensity rule."""
import io
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from pipeline.data import dicom, preprocess
from pipeline.data.preprocess import InvalidImage
from tests.pipeline import dicom_samples as samples

REFERENCE = (samples.picture() * 4095).round().astype(np.uint16)  # 12-bit stored values
EXPECTED = np.round(REFERENCE.astype(np.float64) * 255 / 4095)     # the same film in 8 bits


def measured(fn, *args, **kwargs):
    """(result or exception, seconds, peak traced MB): numpy and zlib buffers are traced."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
    except Exception as exc:  # returned, so the caller can check it
        out = exc
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, peak


def test_deflate_bomb_from_the_issue_is_refused_fast_with_bounded_memory():
    bomb = samples.deflate_bomb(200)  # 200 MB of zeros as Pixel Data of a 512x512 image
    assert len(bomb) < 210_000
    err, seconds, peak = measured(preprocess.load_image, bomb)
    assert isinstance(err, InvalidImage) and "inflates past its declared size" in err.reason
    # inflation stops at header budget + declared pixels (1.6 MB), not 200 MB
    assert seconds < 2 and peak < 16, (seconds, peak)


def test_deflate_bomb_in_the_header_and_oversized_geometry_are_refused():
    err, seconds, peak = measured(preprocess.load_image, samples.deflate_bomb(200, in_header=True))
    assert isinstance(err, InvalidImage) and "header over 1 MB" in err.reason
    assert seconds < 2 and peak < 16, (seconds, peak)
    err, _, peak = measured(preprocess.load_image, samples.deflate_bomb(1, rows=20000, columns=20000))
    assert isinstance(err, InvalidImage) and "decompression bomb" in err.reason and peak < 16


def test_a_real_deflated_file_still_decodes():
    arr = np.asarray(preprocess.load_image(samples.encode("deflate", REFERENCE)))
    assert np.abs(arr - EXPECTED).max() <= 1


def test_multiframe_over_budget_is_refused_before_decoding():
    data = samples.multiframe_rle(40, 1024)  # the issue's file: ~1.4 MB, 40 x 1024 x 1024 x 16 bit
    assert len(data) < 2 * 2**20
    err, seconds, _ = measured(preprocess.load_image, data)
    assert isinstance(err, InvalidImage) and "40 frames x 1024x1024" in err.reason
    assert seconds < 1


def test_multiframe_decodes_only_the_first_frame():
    data = samples.multiframe_rle(40, 1024)
    img, seconds, peak = measured(preprocess.load_image, data, max_pixels=50_000_000)
    assert isinstance(img, Image.Image), img
    arr = np.asarray(img)
    # frame 0 is the picture (bright disc on the left); the 39 others are its mirror image
    assert arr[512, 300:400].mean() > arr[512, 620:720].mean() + 50
    # one 1024x1024 frame is 2 MB (8 MB as float32 on the way to uint8); all 40 would be 80 MB
    assert peak < 25, peak


def test_read_header_reports_what_the_input_gate_needs():
    header = dicom.read_header(samples.encode("jpeg-ls-lossless", REFERENCE))
    assert (header.modality, header.body_part, header.view_position, header.photometric) == \
        ("CR", "CHEST", "PA", "MONOCHROME2")
    assert (header.rows, header.columns, header.frames, header.bits_stored) == (256, 256, 1, 12)
    assert header.transfer_syntax == "1.2.840.10008.1.2.4.80"
    # the header of a bomb is readable too, without inflating its pixel data
    _, seconds, peak = measured(dicom.read_header, samples.deflate_bomb(200))
    assert seconds < 1 and peak < 8


@pytest.mark.parametrize("name", list(samples.SYNTAXES))
def test_hospital_transfer_syntaxes_decode_to_the_same_picture(name):
    lossless = samples.SYNTAXES[name][1]
    data = samples.encode(name, REFERENCE)
    assert dicom.read_header(data).transfer_syntax == samples.SYNTAXES[name][0]
    arr = np.asarray(preprocess.load_image(data), np.float64)
    diff = np.abs(arr - EXPECTED)
    if lossless:
        assert diff.max() <= 1, diff.max()
    else:  # lossy: close on average (edges ring a little)
        assert diff.mean() < 2, diff.mean()


@pytest.mark.parametrize("compressed", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                        "MR_small_jpeg_ls_lossless.dcm", "MR_small_expb.dcm"])
def test_files_shipped_with_pydicom_match_their_uncompressed_original(compressed):
    from pydicom.data import get_testdata_file

    def decode(name):
        with open(get_testdata_file(name), "rb") as f:
            return np.asarray(preprocess.load_image(f.read(), min_side=32))

    assert np.array_equal(decode(compressed), decode("MR_small.dcm"))


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEGLSNearLossless_16.dcm", "JPEG2000.dcm",
                                  "image_dfl.dcm"])
def test_other_shipped_hospital_files_decode(name):
    """Our header-first, one-frame path gives pydicom's own full decoding (through the same
    intensity rule)."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    with open(path, "rb") as f:
        arr = np.asarray(preprocess.load_image(f.read(), min_side=8), np.float64)
    ds = dcmread(path)
    pixels = ds.pixel_array
    pixels = pixels[0] if pixels.ndim == 3 else pixels
    reference = dicom.to_uint8(pixels, ds, dicom.read_header(open(path, "rb").read()))
    assert reference.std() > 0 and np.abs(arr - reference).max() <= 1


def dicom_of(**attrs) -> bytes:
    return samples.to_bytes(samples.dataset(REFERENCE, **attrs))


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_one_intensity_rule_for_8_bit_16_bit_and_dicom():
    """The same film saved as 8-bit PNG, 16-bit PNG and DICOM (plain, rescaled, windowed,
    MONOCHROME1) gives the same uint8 picture within 2 grey levels."""
    film = REFERENCE.astype(np.float64) / 4095
    stored_16 = np.round(film * 65535).astype(np.uint16)
    versions = {
        "png-8": png(EXPECTED.astype(np.uint8)),
        "png-16": png(stored_16),
        "dicom-12-bit": dicom_of(),
        "dicom-16-bit": samples.to_bytes(samples.dataset(stored_16, bits_stored=16)),
        # stored values are offsets; the Modality LUT maps them back to the film's range
        "dicom-rescaled": samples.to_bytes(samples.dataset(
            (REFERENCE // 2).astype(np.uint16), bits_stored=11, RescaleSlope=2, RescaleIntercept=0)),
        # a window over the whole 12-bit range (what an archive writes for a full-range CR)
        "dicom-windowed": dicom_of(WindowCenter=2048, WindowWidth=4096),
        # MONOCHROME1: high stored values are dark
        "dicom-monochrome1": samples.to_bytes(samples.dataset(
            (4095 - REFERENCE).astype(np.uint16), photometric="MONOCHROME1")),
    }
    for name, data in versions.items():
        arr = np.asarray(preprocess.load_image(data), np.float64)
        assert np.abs(arr - EXPECTED).max() <= 2, name


def test_window_and_modality_lut_are_applied():
    # A narrow window shows only 1000..3000 of the 12-bit range: everything under it is black
    windowed = np.asarray(preprocess.load_image(dicom_of(WindowCenter=2000, WindowWidth=2000)))
    assert windowed[REFERENCE < 1000].max() == 0 and windowed[REFERENCE > 3000].min() == 255
    # A CT-like rescale (intercept -1024) with a window in modality units gives the same picture
    # as the window on the raw values shifted by 1024
    shifted = np.asarray(preprocess.load_image(dicom_of(
        RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=2000 - 1024, WindowWidth=2000)))
    assert np.abs(shifted.astype(int) - windowed).max() <= 1


def test_truncated_and_inconsistent_dicoms_are_invalid_image():
    good = samples.encode("jpeg-ls-lossless", REFERENCE)
    for bad in (good[:400], good[:-2000], good[:200] + b"\xff" * 200 + good[400:]):
        with pytest.raises(InvalidImage):
            preprocess.load_image(bad)


@pytest.mark.parametrize("name", ["jpeg-ls-lossless", "jpeg2000-lossless", "jpeg-lossless-sv1"])
def test_compressed_frame_larger_than_the_header_is_refused_before_decoding(name):
    """The codec allocates what the codestream says: a 1024x1024 frame behind a 256x256 header."""
    from pydicom import dcmread

    big = samples.encode(name, (samples.picture(1024) * 4095).astype(np.uint16))
    ds = dcmread(io.BytesIO(big))
    ds.Rows = ds.Columns = 256
    with pytest.raises(InvalidImage, match="compressed frame is 1024x1024, header says 256x256"):
        preprocess.load_image(samples.to_bytes(ds))
