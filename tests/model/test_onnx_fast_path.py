"""The ONNX export (pipeline.inference.onnx_export), its int8 copy and the site's fast path (pipeline.inference.engine)
on real X-rays: ONNX Runtime matches PyTorch, the fast path agrees with the float32 reference or is
not used, an int8 copy that disagrees gives way to the float32 file, and a lone answer runs on
every core (pipeline.inference.concurrency)."""
from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import onnx
import pytest
import torch

from pipeline.evaluation import fastpath
from pipeline.inference import concurrency, engine, onnx_export
from pipeline.data import preprocess
from pipeline.inference.predict import Predictor
from pipeline.model import artifacts


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def xrays(shared_datasets, predictor) -> tuple[np.ndarray, np.ndarray]:
    """24 real X-rays (full-resolution samples and training films) at the model's size, with labels."""
    files = sorted((shared_datasets / "fullres_samples").glob("*/*.jpeg"))
    for cls in ("NORMAL", "PNEUMONIA"):
        files += sorted((shared_datasets / "chest_xray" / "train" / cls).glob("*.jpeg"))[:8]
    arrays = np.stack([preprocess.load_array(f, predictor.image_size) for f in files[:24]])
    return arrays, np.array([int(f.parent.name == "PNEUMONIA") for f in files[:24]])


@pytest.fixture(scope="module")
def onnx_file(predictor, tmp_path_factory):
    return onnx_export.export(predictor, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def training_xrays(shared_datasets, predictor) -> np.ndarray:
    """Calibration images for the int8 copy: training films only, none of `xrays`' own test films."""
    files = sorted((shared_datasets / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))[8:28]
    files += sorted((shared_datasets / "chest_xray" / "train" / "PNEUMONIA").glob("*.jpeg"))[8:28]
    return np.stack([preprocess.load_array(f, predictor.image_size) for f in files])


def test_onnx_runtime_matches_pytorch_on_real_xrays(predictor, xrays, onnx_file):
    report = onnx_export.validate(onnx_file, predictor, xrays[0])
    assert report["n"] == 24 and report["max_abs_logit_diff"] <= onnx_export.LOGIT_TOLERANCE
    assert report["label_agreement"] == 1.0
    # any batch size (dynamic axis), and what a hospital computes from the file alone gives our answer
    meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert int(meta["image_size"]) == predictor.image_size and meta["intensity"] == predictor.intensity
    x = preprocess.model_input(torch.from_numpy(xrays[0][:5])[:, None], meta["intensity"]).numpy()
    logit, feats, _cam = onnx_export.session(onnx_file).run(None, {"image": x})
    assert logit.shape == (5,) and feats.shape == (5, 512)
    p = 1 / (1 + np.exp(-(float(meta["calibration_a"]) * logit + float(meta["calibration_b"]))))
    expected = predictor.probabilities(xrays[0][:5])
    assert p == pytest.approx(expected, abs=1e-4)


def test_a_file_that_does_not_match_is_refused(predictor, xrays, onnx_file, tiny_checkpoint):
    other = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    with torch.no_grad():
        other.model.fc.bias += 0.5   # the file no longer computes what this network computes
    with pytest.raises(onnx_export.OnnxMismatch, match="differ"):
        onnx_export.validate(onnx_file, other, xrays[0])


def test_fast_path_agrees_with_the_reference_or_is_refused(predictor, xrays, onnx_file):
    result = fastpath.check(predictor, onnx_file, {"held-out": xrays})
    report = result["sets"]["held-out"]
    assert result["precision"] in ("bf16", "f32")
    assert 0.0 <= report["label_agreement"] <= 1.0 and report["max_abs_probability_diff"] < 0.05
    # the rule itself: one label in 200 flipped passes, two do not; an AUC move of 0.003 does not
    ok = {"label_agreement": 0.995, "gate_agreement": 1.0, "auc_delta": 0.0}
    assert fastpath.verdict({"a": ok})[0]
    assert not fastpath.verdict({"a": {**ok, "label_agreement": 0.99}})[0]
    assert not fastpath.verdict({"a": {**ok, "gate_agreement": 0.99}})[0]
    assert "AUC" in fastpath.verdict({"a": ok, "b": {**ok, "auc_delta": 0.003}})[1]
    # and the confidence stays calibrated: ECE may grow by 0.01, not more
    assert fastpath.verdict({"a": {**ok, "ece_reference": 0.02, "ece_fast": 0.03}})[0]
    assert "calibration" in fastpath.verdict({"a": {**ok, "ece_reference": 0.02, "ece_fast": 0.035}})[1]


def test_predictor_on_the_fast_engine_answers_like_the_reference(predictor, xrays, onnx_file, tiny_checkpoint):
    fast = engine.FastEngine(onnx_file, predictor.intensity, precision="f32")
    assert fast.precision == "f32" and predictor.engine_name == "torch-fp32" and fast.has_cam
    logits, feats = fast.forward(xrays[0])
    ref_logits, ref_feats = predictor.forward(xrays[0])
    assert logits == pytest.approx(ref_logits, abs=1e-3)
    assert np.abs(feats - ref_feats).max() < 1e-2


def test_int8_copy_is_quantized_keeps_the_metadata_and_runs_in_onnx_runtime(predictor, xrays, onnx_file,
                                                                            training_xrays, tmp_path):
    int8 = onnx_export.quantize(onnx_file, training_xrays, predictor.intensity, tmp_path / artifacts.ONNX_INT8_FILE)
    model = onnx.load(str(int8))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["precision"] == "int8" and meta["threshold"] == repr(predictor.threshold)
    x = preprocess.model_input(torch.from_numpy(xrays[0])[:, None], predictor.intensity).numpy()
    logit, feats, cam = onnx_export.session(int8).run(None, {"image": x})
    ref_logits, _ = predictor.forward(xrays[0])
    side = predictor.image_size // 32
    assert logit.shape == (24,) and feats.shape == (24, 512) and cam.shape == (24, side, side)
    # a quantized copy of the same network: not equal to it, but ranking the films alike
    assert np.abs(logit - ref_logits).max() > 0
    assert np.corrcoef(logit, ref_logits)[0, 1] > 0.95


def test_fast_path_check_tries_int8_first_and_falls_back_when_it_disagrees(predictor, xrays, onnx_file,
                                                                          training_xrays, tiny_checkpoint,
                                                                          tmp_path):
    good = onnx_export.quantize(onnx_file, training_xrays, predictor.intensity, tmp_path / "good.onnx")
    result = fastpath.check(predictor, onnx_file, {"held-out": xrays}, int8_path=good)
    assert next(iter(result["tried"])) == "int8"
    assert (result["precision"] == "int8") == result["tried"]["int8"]["ok"]
    # an int8 file of another network (its logits negated) must not answer for this one
    other = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    with torch.no_grad():
        other.model.fc.weight.neg_()
        other.model.fc.bias.neg_()
    bad = onnx_export.quantize(onnx_export.export(other, tmp_path / "other.onnx"), training_xrays,
                               predictor.intensity, tmp_path / "bad.onnx")
    result = fastpath.check(predictor, onnx_file, {"held-out": xrays}, int8_path=bad)
    assert list(result["tried"]) == ["int8", result["precision"]] and result["precision"] in ("bf16", "f32")
    assert not result["tried"]["int8"]["ok"] and result["reason"].startswith("int8: ")
    assert result["ok"] == result["tried"][result["precision"]]["ok"]


class CountingRequest:
    """An infer request that counts its calls (which compiled copy ran)."""

    def __init__(self, request):
        self.request, self.calls = request, 0

    def infer(self, inputs):
        self.calls += 1
        return self.request.infer(inputs)


def test_a_lone_answer_runs_on_every_core_and_answers_the_same(predictor, xrays, onnx_file, monkeypatch):
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: {0, 1})  # two cores, whatever this machine has
    fast = engine.FastEngine(onnx_file, predictor.intensity, precision="f32", threads=1)
    share = fast.request = CountingRequest(fast.request)
    one = xrays[0][:1]
    with concurrency.answering(), concurrency.answering():  # another answer is being computed: the share
        busy = fast.forward(one)
    assert share.calls == 1 and fast._wide_request is None
    with concurrency.answering():  # alone: every core, on a second compiled copy
        lone = fast.forward(one)
    assert share.calls == 1 and fast._wide_request is not None
    assert lone[0] == pytest.approx(busy[0], abs=1e-5) and np.abs(lone[1] - busy[1]).max() < 1e-4
    fast.forward(xrays[0][:2])  # a batch is several answers: the share
    assert share.calls == 2
    fast.stay_on_share()  # the shadow's challenger never takes the cores
    with concurrency.answering():
        fast.forward(one)
    assert share.calls == 3 and fast._wide_request is None


def test_an_engine_given_every_core_has_nothing_to_spread(predictor, onnx_file, monkeypatch):
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: {0, 1})
    assert not engine.FastEngine(onnx_file, predictor.intensity, precision="f32", threads=2).spread
    assert not engine.FastEngine(onnx_file, predictor.intensity, precision="f32").spread  # OpenVINO's own choice


def test_the_count_is_shared_by_processes_forked_after_it():
    """gunicorn.conf.py imports the module in the master: every worker forked from it counts in one
    place; what background work waits for is its own process's answers only."""
    ctx = multiprocessing.get_context("fork")
    entered, release = ctx.Event(), ctx.Event()

    def worker():
        with concurrency.answering():
            entered.set()
            release.wait(30)

    child = ctx.Process(target=worker)
    child.start()
    try:
        assert entered.wait(30)
        assert concurrency.alone() and concurrency.wait_idle(0)   # the child's answer: not this process's
        with concurrency.answering():
            assert not concurrency.alone()                        # the child's + this one
            assert not concurrency.wait_idle(0.01)
    finally:
        release.set()
        child.join(30)
    assert child.exitcode == 0
    with concurrency.answering():
        assert concurrency.alone()                                # the child's answer was counted out


def test_background_work_waits_for_the_answer_in_progress():
    """The shadow's worker waits (wait_idle) until this process's doctors are answered."""
    entered, release, waited = threading.Event(), threading.Event(), []

    def doctor():
        with concurrency.answering():
            entered.set()
            release.wait(30)

    t = threading.Thread(target=doctor)
    t.start()
    assert entered.wait(30)
    waiter = threading.Thread(target=lambda: waited.append(concurrency.wait_idle(30)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not waited      # still waiting while the answer is computed
    release.set()
    waiter.join(30)
    t.join(30)
    assert waited == [True]
