"""Issue 28 (cycle time): training keeps the challenger's raw float32 outputs (outputs.npz) and the
evaluation scores from them instead of running the same network on the same images again; the
fast-path check takes its float32 reference from the same outputs. Both must give the figures a
fresh forward pass gives."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.data import training_data
from pipeline.evaluation import evaluate, fastpath, quality
from pipeline.inference import onnx_export
from pipeline.inference.predict import Predictor
from pipeline.mlops import candidates


@pytest.fixture(scope="module")
def fresh(tiny_checkpoint, small_dataset, tiny_params):
    predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu")
    splits, _, cache = training_data.load(small_dataset, tiny_params)
    return predictor, splits, cache, quality.score(predictor, splits, tiny_params, cache)


def test_training_keeps_the_outputs_that_a_fresh_forward_pass_gives(tiny_checkpoint, fresh):
    kept = quality.load_outputs(tiny_checkpoint.parent / quality.OUTPUTS_FILE)
    now = fresh[3]["outputs"]
    assert set(kept) == set(now) and "test" in kept and any(k.startswith("stress:") for k in kept)
    for name, o in now.items():
        assert kept[name].keys == o.keys and np.array_equal(kept[name].y, o.y)
        # training ran the same weights (channels_last, its own process): equal to float tolerance
        assert np.abs(kept[name].z - o.z).max() < 1e-4, name
        assert np.abs(kept[name].features - o.features).max() < 1e-3, name


def test_scoring_from_known_outputs_gives_the_same_figures(fresh, tiny_params, monkeypatch):
    predictor, splits, cache, scored = fresh
    calls = []
    forward = predictor.forward
    monkeypatch.setattr(predictor, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    again = quality.score(predictor, splits, tiny_params, cache, known=scored["outputs"])
    assert calls == []                                      # nothing run twice
    assert quality.flat_metrics(again) == quality.flat_metrics(scored)
    # outputs of other images (another split) are not taken: those sets are run
    other = {name: quality.Outputs(o.keys[::-1], o.y[::-1], o.z[::-1], o.features[::-1])
             for name, o in scored["outputs"].items()}
    redone = quality.score(predictor, splits, tiny_params, cache, known=other)
    assert len(calls) == len(scored["outputs"])
    assert quality.flat_metrics(redone) == quality.flat_metrics(scored)


def test_outputs_survive_the_file(fresh, tmp_path):
    outputs = fresh[3]["outputs"]
    back = quality.load_outputs(quality.save_outputs(tmp_path / "o.npz", outputs))
    for name, o in outputs.items():
        assert back[name].keys == o.keys and back[name].z.dtype == o.z.dtype
        assert np.array_equal(back[name].z, o.z) and np.array_equal(back[name].features, o.features)


def test_the_fast_path_check_is_the_same_with_the_scorings_reference(fresh, tiny_params, tmp_path):
    predictor, splits, cache, scored = fresh
    onnx_file = onnx_export.export(predictor, tmp_path / "model.onnx")
    held = evaluate.sample_arrays(splits.test, predictor.image_size, tiny_params, cache)
    shifted = quality.stress_set(splits.test, tiny_params, predictor.image_size)
    sets = {"held-out": held, "stress": (np.concatenate(list(shifted.arrays.values())),
                                         np.tile(shifted.labels, len(shifted.arrays)))}
    reference = candidates._reference(scored["outputs"], splits, shifted)
    assert reference is not None
    given = fastpath.check(predictor, onnx_file, sets, reference=reference)
    computed = fastpath.check(predictor, onnx_file, sets)
    assert given["ok"] == computed["ok"] and given["precision"] == computed["precision"]
    for name in sets:
        assert given["sets"][name]["label_agreement"] == computed["sets"][name]["label_agreement"]
        # the stress reference ran shift by shift, the check's own in one stream (other batch edges)
        assert given["sets"][name]["max_abs_probability_diff"] == pytest.approx(
            computed["sets"][name]["max_abs_probability_diff"], abs=1e-5)
    # outputs of other images give no reference: the check computes its own
    assert candidates._reference({"test": scored["outputs"]["test"]}, splits, shifted) is None
