"""The input gate (pipeline.inference.gate): foreign inputs refused, real X-rays answered, the gate stored in
the checkpoint by training, old checkpoints on cheap checks only, drift seen on a shifted stream."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from foreign_inputs import (HELD_OUT, SCENE_SOURCES, TUNING, at_production_margin, foreign, grey_photos, misoriented,
                            scene_photos, xray_dicom)
from PIL import Image, ImageFilter

from pipeline.settings import config
from pipeline.data import dataset, preprocess
from pipeline.data import training_data
from pipeline.evaluation import drift
from pipeline.inference import gate, upload
from pipeline.inference.predict import Predictor
from pipeline.training import gate_fit
from pipeline.inference.answer import answer_file


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def fullres(shared_datasets) -> list:
    return sorted((shared_datasets / "fullres_samples").glob("*/*.jpeg"))


def _refusal(predictor, blob: bytes) -> str | None:
    try:
        answer_file(blob, predictor)
    except gate.NotAChestXray as exc:
        assert exc.reason.startswith(gate.PREFIX)
        return exc.reason
    return None


def test_file_checks_refuse_without_a_model():
    for name, (_, blob) in foreign().items():
        if name in ("text page", "drawing"):  # grey graphics: caught on the model input (grey levels)
            continue
        with pytest.raises(gate.NotAChestXray):
            upload.decode(blob, 64)


def test_file_checks_pass_every_real_upload(fullres):
    """The 80 full-resolution X-rays, 10 of them RGB-encoded, one 3.2:1: no cheap-check refusal."""
    rgb = 0
    for path in fullres:
        blob = path.read_bytes()
        assert upload.decode(blob, 64).warnings == [], path.name
        rgb += Image.open(io.BytesIO(blob)).mode == "RGB"
    assert rgb == 10


def test_training_stores_a_fitted_gate(tiny_checkpoint, predictor):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    state = ckpt["gate"]
    assert state["max_distance"] > 0 and 0 < state["min_upright"] <= 0.5
    assert len(state["mean"]) == 512 and len(state["orient_coef"]) == len(gate.ORIENTATIONS)
    assert np.shape(state["layout"]["basis"]) == (gate.LAYOUT_MODES, gate.LAYOUT_SIDE ** 2)
    assert np.shape(state["texture"]["center"]) == np.shape(state["texture"]["scale"]) == (len(gate.TEXTURE_NAMES),)
    assert state["texture"]["max_score"] > 0 and "texture score" in predictor.gate.description
    assert predictor.gate.learned and "feature distance" in predictor.gate.description


@pytest.mark.parametrize("kind", ["foreign", "grey", "misoriented"])
def test_every_foreign_class_refused(predictor, fullres, kind, monkeypatch, tiny_params):
    at_production_margin(predictor.gate, tiny_params, monkeypatch)
    xray = Image.open(fullres[0])
    samples = {"foreign": foreign, "grey": grey_photos, "misoriented": lambda: misoriented(xray)}[kind]()
    for name, (_, blob) in samples.items():
        assert _refusal(predictor, blob), f"{name} was answered"


def test_layout_alone_refuses_photos_and_names_a_turned_film(predictor, fullres, monkeypatch, tiny_params):
    """The layout check (eigen-chests) does not depend on the network: with the two feature checks
    switched off, grey photos are still refused, and a film turned 90 degrees is told so."""
    at_production_margin(predictor.gate, tiny_params, monkeypatch)
    monkeypatch.setattr(predictor.gate, "max_distance", float("inf"))
    monkeypatch.setattr(predictor.gate, "min_upright", 0.0)
    for name, (_, blob) in grey_photos().items():
        assert "layout" in (_refusal(predictor, blob) or "answered"), name
    turned = misoriented(Image.open(fullres[0]))
    assert "not an upright chest film" in _refusal(predictor, turned["rotated 90"][1])
    assert "rotated 90 degrees" in _refusal(predictor, turned["rotated 90"][1])


def test_scene_photo_sets_are_split_once():
    """The tuning and held-out halves of the shipped photographs are disjoint and cover them all."""
    assert not set(TUNING) & set(HELD_OUT) and sorted(TUNING + HELD_OUT) == sorted(SCENE_SOURCES)
    assert len(TUNING) == len(HELD_OUT) == 12


@pytest.mark.parametrize("half", ["tuning", "held-out"])
def test_texture_alone_refuses_grey_scene_photos(predictor, monkeypatch, tiny_params, half):
    """Real photographs shipped by scikit-image and matplotlib (grass, bricks, a street, a rocket at
    night, a cat, a microscope slide...), in grey, cropped and resized: with the layout and the
    feature checks switched off, the texture check alone refuses them, on the half it was designed
    on and on the half it never saw (the tiny model's 13 validation films make its limit tight;
    production's figures on a real model: docs/benchmarks.md)."""
    at_production_margin(predictor.gate, tiny_params, monkeypatch)
    monkeypatch.setattr(predictor.gate, "max_layout", float("inf"))
    monkeypatch.setattr(predictor.gate, "max_distance", float("inf"))
    monkeypatch.setattr(predictor.gate, "min_upright", 0.0)
    photos = {**scene_photos(TUNING), **grey_photos()} if half == "tuning" else scene_photos(HELD_OUT)
    answered, other = [], []
    for name, (_, blob) in photos.items():
        try:
            reason = _refusal(predictor, blob)
        except preprocess.InvalidImage:  # a crop under the 64 px minimum
            continue
        if reason is None:
            answered.append(name)
        elif "photograph or a scan" not in reason:
            other.append(name)  # the grey-level check (a photo of a page of text)
    print(f"\n{half}: {len(photos)} photos, texture refused {len(photos) - len(answered) - len(other)}, "
          f"answered {answered}")
    assert len(answered) <= 0.1 * len(photos), answered


def test_texture_keeps_real_xrays(predictor, fullres, shared_datasets):
    """The texture check measures the equalised image, so real films from other sources and sizes
    pass it: the 80 full-resolution films and the 16 of the provided val/ folder. The tiny model's
    limit comes from 13 validation films at 64 px (widened as fitted for the tests): at most 2 of 96
    here; on a real model none of the 875 real films of docs/benchmarks.md is refused by it."""
    films = fullres + sorted((shared_datasets / "chest_xray" / "val").glob("*/*.jpeg"))
    arrays = np.stack([preprocess.load_array(f.read_bytes(), predictor.image_size) for f in films])
    scores = predictor.gate.texture_score(arrays)
    refused = [f.name for f, s in zip(films, scores) if s > predictor.gate.max_texture]
    print(f"\ntexture: {len(refused)}/{len(films)} real films over {predictor.gate.max_texture:.2f}: {refused}")
    assert len(refused) <= 2


def test_checkpoint_without_texture_skips_it(tiny_checkpoint, tmp_path, fullres):
    """A gate fitted before the texture check existed loads, and runs without it."""
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    del ckpt["gate"]["texture"]
    torch.save(ckpt, tmp_path / "no-texture.pt")
    old = Predictor.from_checkpoint(tmp_path / "no-texture.pt", device="cpu")
    assert old.gate.learned and "texture" not in old.gate.description
    assert not old.gate.texture_score(np.zeros((2, 8, 8), np.uint8)).any()
    assert answer_file(fullres[0].read_bytes(), old).prediction.label in ("NORMAL", "PNEUMONIA")


def test_real_xrays_answered_and_lateral_view_warned(predictor, fullres):
    xray = Image.open(fullres[0])
    ok = answer_file(xray_dicom(xray, "PA"), predictor).prediction
    assert ok.warning == "" and ok.gate_score is not None
    lateral = answer_file(xray_dicom(xray, "LL"), predictor).prediction
    assert "lateral view" in lateral.warning
    refused = [p.name for p in fullres if _refusal(predictor, p.read_bytes())]
    rate = len(refused) / len(fullres)
    print(f"\ntiny model (64 px, 1 epoch): {len(refused)}/{len(fullres)} full-resolution X-rays refused "
          f"({rate:.1%}): {refused}")
    # thresholds set on 13 validation images of a 1-epoch 64 px model cannot promise 1 %: this bounds
    # the tiny model only; the figure on a real model comes from benchmarks/bench_gate.py (docs/benchmarks.md)
    assert rate <= 0.10


def test_old_checkpoint_gets_cheap_checks_only(tiny_checkpoint, tmp_path, fullres):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    del ckpt["gate"]
    torch.save(ckpt, tmp_path / "old.pt")
    old = Predictor.from_checkpoint(tmp_path / "old.pt", device="cpu")
    assert not old.gate.learned and "cheap checks only" in old.gate.description
    assert _refusal(old, foreign()["colour photo (flower)"][1])
    assert _refusal(old, foreign()["CT DICOM"][1])
    answer = answer_file(fullres[0].read_bytes(), old).prediction
    assert answer.gate_score is None and answer.label in ("NORMAL", "PNEUMONIA")


def test_refit_adds_the_gate_to_an_old_checkpoint(tiny_checkpoint, small_dataset, tmp_path):
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    del ckpt["gate"]
    torch.save(ckpt, tmp_path / "old.pt")
    metrics = gate_fit.refit(tmp_path / "old.pt", small_dataset, tmp_path / "new.pt")
    assert metrics["gate_val_false_refusal_rate"] <= 0.01 + 1e-9
    assert Predictor.from_checkpoint(tmp_path / "new.pt", device="cpu").gate.learned


def _shift(arr: np.ndarray) -> np.ndarray:
    """Another device: blurred, low contrast and brighter, on the model's input."""
    img = Image.fromarray(arr).filter(ImageFilter.GaussianBlur(2))
    return np.clip(np.asarray(img, np.float32) * 0.5 + 110, 0, 255).astype(np.uint8)


def test_drift_report_on_a_shifted_stream(predictor, small_dataset, tiny_params):
    """A seeded stream of the validation X-rays (the population the reference describes) as served,
    then the same stream through another 'device': the first is quiet, the second raises the alert."""
    splits, _, cache = training_data.load(small_dataset, tiny_params)
    x = dataset.arrays(splits.val, cache)[0]
    # every validation image 5 times, seeded order: a small reference (13 images at TINY size)
    # makes random draws too lumpy for a PSI over its deciles
    stream = np.random.default_rng(0).permutation(np.repeat(x, 5, axis=0))
    reference = predictor.gate.state["reference"]

    def served(arrays):
        records = []
        for arr in arrays:
            try:
                logit, feats = predictor.logit_features(arr)
                p = predictor.judged(predictor.decide(logit), arr, feats)
                records.append({"gate_score": p.gate_score, "label": p.label, "refused": False})
            except gate.NotAChestXray as exc:
                records.append({"gate_score": exc.score, "label": "", "refused": True})
        return records

    quiet = drift.report(served(stream), reference, config.load_params().drift)
    shifted = drift.report(served(np.stack([_shift(a) for a in stream])), reference,
                           config.load_params().drift)
    print(f"\nunshifted: {quiet.summary()}\nshifted: {shifted.summary()}")
    assert not quiet.drifted, quiet.alerts
    assert shifted.drifted and shifted.psi > quiet.psi
    assert shifted.metrics()["drift_alert"] == 1.0


def test_psi_and_thin_streams():
    q = np.linspace(0, 10, 11)
    assert drift.psi(np.random.default_rng(0).uniform(0, 10, 5000), q) < 0.01
    assert drift.psi(np.full(100, 50.0), q) > 1
    few = drift.report([{"gate_score": 99.0, "label": "", "refused": True}] * 5, {"distance_quantiles": list(q)},
                       config.load_params().drift)
    assert few.refusal_rate == 1.0 and not few.drifted  # under min_records: no alert from 5 requests


def test_grey_levels_of_a_real_input(fullres):
    arr = preprocess.load_array(fullres[0], 160)
    assert gate.grey_entropy(arr) > 6
