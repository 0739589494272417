"""The stress transforms are the shifts they claim to be, at the strength they claim, and the same
every time for the same seed."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data import preprocess
from pipeline.evaluation import shift


@pytest.fixture(scope="module")
def xray(shared_datasets) -> np.ndarray:
    """A real chest X-ray as the dataset stores it (uint8, 224 x 224)."""
    path = sorted((shared_datasets / "chest_xray" / "train" / "NORMAL").iterdir())[0]
    return np.asarray(preprocess.load_image(path))


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(preprocess.load_image(data), np.float64)


def laplacian_energy(a: np.ndarray) -> float:
    """High-frequency content: variance of the discrete Laplacian."""
    lap = -4 * a[1:-1, 1:-1] + a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:]
    return float(lap.var())


def by_name(name: str) -> shift.Shift:
    return {s.name: s for s in shift.stress_shifts()}[name]


def test_every_family_comes_at_two_strengths_and_decodes_through_the_one_path(xray):
    shifts = shift.stress_shifts()
    assert {s.strength for s in shifts} == {"mild", "strong"}
    assert len(shifts) == 2 * len(shift.FAMILIES)
    for s in shifts:
        arr = preprocess.load_array(s.apply(xray, seed=1, image_key="a"), 160)
        assert arr.shape == (160, 160) and arr.dtype == np.uint8, s.name


def test_same_seed_same_bytes_other_seed_other_draw(xray):
    noise = by_name("noise:strong")
    assert noise.apply(xray, 7, "img") == noise.apply(xray, 7, "img")
    assert noise.apply(xray, 7, "img") != noise.apply(xray, 8, "img")
    assert noise.apply(xray, 7, "img") != noise.apply(xray, 7, "other-img")


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown shift families"):
        shift.stress_shifts(["gamma", "sepia"])


@pytest.mark.parametrize("family", ["blur", "downscale"])
def test_softening_shifts_remove_high_frequencies_more_when_strong(xray, family):
    base = laplacian_energy(xray.astype(np.float64))
    mild = laplacian_energy(decoded(by_name(f"{family}:mild").apply(xray)))
    strong = laplacian_energy(decoded(by_name(f"{family}:strong").apply(xray)))
    assert strong < mild < base


def test_unsharp_adds_high_frequencies(xray):
    base = laplacian_energy(xray.astype(np.float64))
    assert base < laplacian_energy(decoded(by_name("unsharp:mild").apply(xray))) \
        < laplacian_energy(decoded(by_name("unsharp:strong").apply(xray)))


def test_noise_has_the_stated_standard_deviation(xray):
    flat = np.full((200, 200), 128, np.uint8)          # no clipping: the residual is the noise
    for strength, sigma in (("mild", 4.0), ("strong", 10.0)):
        residual = decoded(by_name(f"noise:{strength}").apply(flat)) - 128
        assert residual.std() == pytest.approx(sigma, rel=0.05)


@pytest.mark.parametrize("family", ["gamma", "contrast", "gradient"])
def test_tone_shifts_move_pixels_further_when_strong(xray, family):
    src = xray.astype(np.float64)
    mild = np.abs(decoded(by_name(f"{family}:mild").apply(xray, 3, "k")) - src).mean()
    strong = np.abs(decoded(by_name(f"{family}:strong").apply(xray, 3, "k")) - src).mean()
    assert 1.0 < mild < strong


def test_contrast_scales_spread_around_the_mean_by_the_stated_factor():
    ramp = np.tile(np.linspace(60, 190, 256), (64, 1)).astype(np.uint8)   # no clipping at 1.4x
    s = by_name("contrast:strong")
    out = decoded(s.apply(ramp, 0, "r"))
    factor = out.std() / ramp.std()
    assert factor == pytest.approx(1.4, abs=0.01) or factor == pytest.approx(0.6, abs=0.01)


def test_jpeg_loses_more_at_the_strong_quality(xray):
    def psnr(data):
        err = ((decoded(data) - xray) ** 2).mean()
        return 10 * np.log10(255 ** 2 / err)
    mild, strong = (by_name(f"jpeg:{s}").apply(xray) for s in ("mild", "strong"))
    assert Image.open(io.BytesIO(mild)).format == "JPEG"
    assert 25 < psnr(strong) < psnr(mild)


@pytest.mark.parametrize("strength,bits", [("mild", 16), ("strong", 12)])
def test_png16_stores_the_picture_in_the_stated_bit_depth(xray, strength, bits):
    img = Image.open(io.BytesIO(by_name(f"png16:{strength}").apply(xray)))
    stored = np.asarray(img)
    assert img.format == "PNG" and img.mode.startswith("I")
    assert stored.max() <= 2 ** bits - 1 and stored.max() > 2 ** (bits - 1)


@pytest.mark.parametrize("strength,photometric", [("mild", "MONOCHROME2"), ("strong", "MONOCHROME1")])
def test_dicom_path_stores_12_bit_cr_and_decodes_to_the_same_picture(xray, strength, photometric):
    import pydicom

    data = by_name(f"dicom:{strength}").apply(xray)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.Modality, ds.PhotometricInterpretation, ds.BitsStored) == ("CR", photometric, 12)
    # bone stays bright whichever way the file stores it: the decoder inverts MONOCHROME1
    corr = np.corrcoef(decoded(data).ravel(), xray.ravel())[0, 1]
    assert corr > 0.99


def test_equalize_flattens_the_histogram_more_when_strong(xray):
    def spread(a):  # distance of the grey-level CDF from a straight line (0 = perfectly flat histogram)
        cdf = np.cumsum(np.bincount(a.astype(np.uint8).ravel(), minlength=256)) / a.size
        return float(np.abs(cdf - np.linspace(0, 1, 256)).mean())

    mild = spread(decoded(by_name("equalize:mild").apply(xray)))
    strong = spread(decoded(by_name("equalize:strong").apply(xray)))
    assert strong < mild < spread(xray.astype(np.float64))


@pytest.mark.parametrize("strength,factor", [("mild", 0.08), ("strong", 0.16)])
def test_zoom_changes_the_field_of_view_by_the_stated_factor(xray, strength, factor):
    s = by_name(f"zoom:{strength}")
    keys = [f"k{i}" for i in range(12)]
    outs = [decoded(s.apply(xray, 0, k)) for k in keys]
    assert all(o.shape == xray.shape for o in outs)
    # zoom-out leaves uniform margins about factor/(1+factor)/2 of the side on each edge
    margins = []
    for o in outs:
        row = o[o.shape[0] // 2]
        edge = row[0]
        margins.append(int(np.argmax(np.abs(row - edge) > 0)))
    out_margins = [m for m in margins if m > 2]
    assert out_margins, "no zoom-out drawn in 12 images"
    expected = xray.shape[1] * (1 - 1 / (1 + factor)) / 2
    assert abs(np.median(out_margins) - expected) <= 2


@pytest.mark.parametrize("strength,fraction", [("mild", 0.12), ("strong", 0.3)])
def test_border_adds_black_bars_of_the_stated_width(xray, strength, fraction):
    out = decoded(by_name(f"border:{strength}").apply(xray, 0, "img"))
    grown = (out.shape[0] - xray.shape[0]) + (out.shape[1] - xray.shape[1])
    assert grown == 2 * round(xray.shape[0] * fraction / 2)
    if out.shape[1] > xray.shape[1]:
        assert out[:, :grown // 2].max() == 0
    else:
        assert out[:grown // 2].max() == 0


@pytest.mark.parametrize("strength,degrees", [("mild", 5.0), ("strong", 10.0)])
def test_rotate_turns_the_picture_by_the_stated_angle(xray, strength, degrees):
    out = decoded(by_name(f"rotate:{strength}").apply(xray, 0, "img"))
    img = Image.fromarray(xray)
    fill = int(np.median(np.concatenate([xray[0], xray[-1], xray[:, 0], xray[:, -1]])))
    candidates = {sign: np.asarray(img.rotate(sign * degrees, Image.BILINEAR, fillcolor=fill), np.float64)
                  for sign in (-1, 1)}
    assert min(np.abs(out - c).mean() for c in candidates.values()) < 0.5
    assert np.abs(out - xray).mean() > 3
