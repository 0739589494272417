"""Behaviour of a trained model (the session's tiny model, 64 px) and of the intensity rule:
answers must not move with changes a radiologist would not notice."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from pipeline.settings import config
from pipeline.data import preprocess
from pipeline.training.augment import augment, photometric
from pipeline.settings.params import Photometric
from pipeline.inference.predict import Predictor
from pipeline.inference.answer import answer_file


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def films(shared_datasets) -> list[Image.Image]:
    root = shared_datasets / "chest_xray" / "train"
    paths = sorted((root / "NORMAL").iterdir())[:6] + sorted((root / "PNEUMONIA").iterdir())[:6]
    return [preprocess.load_image(p) for p in paths]


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu")


def test_equalize_is_invariant_to_monotone_tone_changes(films):
    x = torch.from_numpy(preprocess.to_array(films[0], 128))[None, None]
    brighter = (x.float() * 0.7 + 45).round()          # exposure + offset
    gamma = (255 * (x.float() / 255) ** 0.7).round()   # another tone curve
    eq = preprocess.equalize(x)
    for other in (brighter, gamma):
        assert (preprocess.equalize(other) - eq).abs().mean() < 4.0       # grey levels of 255
    assert (brighter - x.float()).abs().mean() > 12                      # whereas the raw inputs differ a lot


def test_equalize_gives_a_flat_histogram():
    x = torch.randint(40, 90, (2, 1, 64, 64)).float()
    eq = preprocess.equalize(x)
    assert eq.min() == 0 and eq.max() == 255
    assert abs(float(eq.mean()) - 127.5) < 8


@pytest.mark.parametrize("change", ["brightness", "contrast", "rotate", "shift"])
def test_answer_is_stable_under_small_changes(predictor, films, change):
    def changed(img: Image.Image) -> Image.Image:
        if change == "brightness":
            return ImageEnhance.Brightness(img).enhance(1.1)
        if change == "contrast":
            return ImageEnhance.Contrast(img).enhance(1.1)
        if change == "rotate":
            return img.rotate(3, Image.BILINEAR)
        return img.transform(img.size, Image.AFFINE, (1, 0, 3, 0, 1, 2), Image.BILINEAR)

    before = np.array([answer_file(png(f), predictor).prediction.probability for f in films])
    after = np.array([answer_file(png(changed(f)), predictor).prediction.probability for f in films])
    # A change no radiologist would notice must move the answer far less than changing the patient
    # does. Relative, because the session's model is one epoch at 64 px (its probabilities are noisy,
    # a 3 px shift is one of its input pixels); the full model's figures are bench_quality's stress table.
    between_films = np.abs(before[:, None] - before[None, :]).sum() / (len(before) * (len(before) - 1))
    assert np.abs(after - before).mean() <= 0.5 * between_films


def test_augmentation_is_reproducible_and_stays_in_range():
    aug = config.apply_overrides(config.load_params(), {"train.augment.photometric.p": 1.0}).train.augment
    x = torch.randint(0, 256, (8, 1, 64, 64), dtype=torch.uint8)
    a = augment(x, aug, torch.Generator().manual_seed(3))
    b = augment(x, aug, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    assert not torch.equal(a, augment(x, aug, torch.Generator().manual_seed(4)))


def test_photometric_noise_has_the_configured_scale():
    x = torch.full((64, 1, 32, 32), 128.0)
    only_noise = Photometric(p=1.0, gamma=0, blur=0, sharpen=0, noise=6, downscale=0, jpeg=0)
    out = photometric(x, only_noise, torch.Generator().manual_seed(0))
    # sigma drawn uniformly in [0, 6] per image: the overall std is 6 / sqrt(3)
    assert float((out - x).std()) == pytest.approx(6 / 3 ** 0.5, rel=0.15)
