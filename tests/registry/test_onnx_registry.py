"""Every registered version carries its ONNX export, validated at registration; the fast-path check
tags the version, and only a version tagged `fast_path=on` is loaded on the fast engine."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.mlops import candidates, loading
from pipeline.settings import config
from pipeline.data import preprocess
from pipeline.data import training_data
from pipeline.inference import onnx_export
from pipeline.model.artifacts import onnx_in


def test_registered_version_carries_a_validated_onnx_file(mlflow_server, trained, reg_params, small_dataset):
    name = config.model_name(reg_params)
    mv = MlflowClient().get_model_version(name, str(trained["version"]))
    assert float(mv.tags["onnx.max_abs_logit_diff"]) <= onnx_export.LOGIT_TOLERANCE
    assert mv.tags["onnx.validated_on"].startswith("32 real X-rays")
    local = loading.download_version(trained["version"], name)
    onnx_file = onnx_in(local)
    assert onnx_file is not None and onnx_file.name == "model.onnx"
    # and its int8 copy, calibrated on the run's training patients (tracked_train passes them)
    int8_file = onnx_in(local, int8=True)
    assert int8_file is not None and int8_file.name == "model_int8.onnx"
    n_train = len(json.loads(Path(trained["out_dir"], "split.json").read_text())["train"])
    assert mv.tags["onnx.int8_calibrated_on"] == f"{min(n_train, onnx_export.CALIBRATION_IMAGES)} training X-rays"
    # run by ONNX Runtime straight from the registry's copy, it answers like the registered network
    predictor, _ = loading.load_version(trained["version"], name)
    arrays = np.stack([preprocess.load_array(p, predictor.image_size)
                       for p in sorted(small_dataset.rglob("*.jpeg"))[:6]])
    report = onnx_export.validate(onnx_file, predictor, arrays)
    assert report["max_abs_logit_diff"] <= onnx_export.LOGIT_TOLERANCE


def test_fast_path_check_tags_the_version_and_loading_follows_the_tag(mlflow_server, trained, reg_params,
                                                                      small_dataset):
    name = config.model_name(reg_params)
    version = int(trained["version"])
    splits, _report, cache = training_data.load(small_dataset, reg_params)
    result = candidates.check_fast_path(version, splits, reg_params, cache, name)
    tags = MlflowClient().get_model_version(name, str(version)).tags
    assert tags["fast_path"] == ("on" if result["ok"] else "off")
    assert set(result["sets"]) == {"held-out", "stress"}
    assert float(tags["fast_path.label_agreement"]) == pytest.approx(
        min(r["label_agreement"] for r in result["sets"].values()), abs=1e-4)

    client = MlflowClient()
    client.set_model_version_tag(name, str(version), "fast_path", "on")
    fast, _ = loading.serve_version(version, name, fast=True)
    assert fast.engine_name == f"openvino-{tags['fast_path.precision']}"
    assert loading.serve_version(version, name, fast=False)[0].engine_name == "openvino-f32"  # whatever the tag
    assert loading.load_version(version, name)[0].engine_name == "torch-fp32"  # evaluation's reference
    client.set_model_version_tag(name, str(version), "fast_path.precision", "int8")  # the int8 copy's verdict
    assert loading.serve_version(version, name, fast=True)[0].engine_name == "openvino-int8"
    client.set_model_version_tag(name, str(version), "fast_path.precision", tags["fast_path.precision"])
    client.set_model_version_tag(name, str(version), "fast_path", "off")
    assert loading.serve_version(version, name, fast=True)[0].engine_name == "openvino-f32"
    client.set_model_version_tag(name, str(version), "fast_path", tags["fast_path"])


def test_one_loader_for_warm_starts_the_cli_and_the_site(mlflow_server, trained, reg_params):
    """models:/<name>@<alias> and models:/<name>/<version> resolve through the registry's version
    cache (the site's loader): warm starts and `--model` get the registered weights."""
    import torch

    from pipeline.model import network

    name = config.model_name(reg_params)
    by_alias = loading.checkpoint_path(f"models:/{name}@challenger")
    by_version = loading.checkpoint_path(f"models:/{name}/{trained['version']}")
    site = loading.download_version(trained["version"], name)
    assert by_alias == by_version and by_alias.parent.parent == site      # one cache entry
    # model.init=models:/...: the registry resolves it to a file first (the model layer knows no registry)
    warm = network.build_model(str(loading.resolve_model(f"models:/{name}/{trained['version']}")))
    reference = torch.load(trained["checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(v, reference[k]) for k, v in warm.state_dict().items())
    with pytest.raises(RuntimeError, match="has no alias 'nobody'"):
        loading.resolve_model(f"models:/{name}@nobody")
    with pytest.raises(ValueError, match="resolve it to a model.pt first"):
        network.build_model(f"models:/{name}/{trained['version']}")
