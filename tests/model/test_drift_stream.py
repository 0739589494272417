"""The drift report on real films: a seeded stream from a shifted source (the same children's films as
another detector would deliver them: heavier blur, noise and collimation borders) makes it alert;
the same films unshifted move far less, and a stream the site has not confirmed enough cases for says the
served operating point is unverified and how to fix it."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation import drift
from pipeline.evaluation.shift import FAMILIES, Shift
from pipeline.inference.answer import answer
from pipeline.inference.gate import NotAChestXray
from pipeline.inference.predict import Predictor
from pipeline.settings import config

DEVICE = [Shift(f, "strong", FAMILIES[f][2], FAMILIES[f][0]) for f in ("blur", "noise", "border")]


def other_device(data: bytes, key: str) -> bytes:
    """A film as a seeded other detector delivers it: each shift applied in turn (PNG)."""
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    for shift in DEVICE:
        pixels = np.asarray(Image.open(io.BytesIO(shift.apply(pixels, seed=7, image_key=key))).convert("L"))
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def records(predictor, films: list[bytes]) -> list[dict]:
    rows = []
    for data in films:
        try:
            p = answer(data, predictor).prediction
            rows.append({"gate_score": p.gate_score, "label": p.label, "refused": False})
        except NotAChestXray as exc:
            rows.append({"gate_score": exc.score, "label": "", "refused": True, "reason": exc.reason})
    return rows


@pytest.fixture(scope="module")
def stream(small_dataset, shared_datasets):
    """60 real films of children the model never saw (a seeded draw outside its training subset)."""
    seen = {p.name for p in small_dataset.rglob("*.jpeg")}
    files = [p for p in sorted((shared_datasets / "chest_xray" / "train").glob("*/*.jpeg")) if p.name not in seen]
    rng = np.random.default_rng(0)
    return [files[i].read_bytes() for i in rng.choice(len(files), 60, replace=False)]


def test_a_shifted_source_makes_the_drift_report_alert(tiny_checkpoint, stream):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    reference = predictor.gate.state["reference"]
    limits = config.load_params().drift
    same = drift.report(records(predictor, stream), reference, limits)
    shifted = drift.report(records(predictor, [other_device(d, str(i)) for i, d in enumerate(stream)]),
                           reference, limits)
    # the test model (1 epoch, 64 px, 120 films) has a coarse reference: unseen films of the same
    # source already sit a little beyond it, so the control is the same films unshifted, not zero
    assert any("PSI" in a for a in shifted.alerts), shifted.summary()
    assert shifted.psi > 2 * same.psi and shifted.psi > limits.psi, (same.summary(), shifted.summary())
    assert shifted.share_above_p90 > same.share_above_p90 + 0.3


def test_too_few_confirmations_leave_the_operating_point_unverified(tiny_checkpoint, stream):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    reference = predictor.gate.state["reference"]
    limits = config.load_params().drift
    rows = records(predictor, [other_device(d, str(i)) for i, d in enumerate(stream)])
    few = drift.report(rows, reference, limits, confirmed=12, min_confirmed=50)
    assert few.operating_point.startswith("unverified: 12 confirmed local cases")
    assert "python -m pipeline site import --data DIR" in few.operating_point
    assert any("operating point is unverified" in a for a in few.alerts)
    enough = drift.report(rows, reference, limits, confirmed=80, min_confirmed=50)
    assert enough.operating_point == "verified on 80 confirmed local cases"
    assert not any("operating point" in a for a in enough.alerts)
    # too few requests to say the inputs moved: the note stands, no alert
    quiet = drift.report(rows[: limits.min_records - 1], reference, limits, confirmed=12, min_confirmed=50)
    assert quiet.operating_point.startswith("unverified") and not any("operating point" in a for a in quiet.alerts)
