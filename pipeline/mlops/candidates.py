"""Scoring the candidates: the challenger and the current champion on the same held-out patients,
the same patients under every stress shift and any external set (evaluate_candidates), and the
challenger's fast path against its float32 reference (check_fast_path). What the policy decides on.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np


from pipeline import timing
from pipeline.data import training_data
from pipeline.evaluation import compare, evaluate, fastpath, quality
from pipeline.mlops.evidence import log_evidence
from pipeline.mlops.loading import download_version, load_version
from pipeline.mlops.server import (CHAMPION, FAST_PATH_TAG, alias_version, check_server, connect, jsonable,
                                   model_name, tag_version)
from pipeline.model.artifacts import onnx_in
from pipeline.settings.params import Params

log = logging.getLogger(__name__)


def _reference(outputs: dict[str, quality.Outputs] | None, splits, shifted) -> dict | None:
    """The float32 reference of the fast-path check's two sets from outputs the scoring already
    made (quality.score), or None when they are not of these very images."""
    names = ["test", *(f"stress:{k}" for k in shifted.arrays)]
    if not outputs or any(n not in outputs for n in names) or \
            outputs["test"].keys != [s.digest for s in splits.test] or \
            any(outputs[n].keys != shifted.keys for n in names[1:]):
        return None
    stress = [outputs[n] for n in names[1:]]
    return {"held-out": (outputs["test"].z, outputs["test"].features),
            "stress": (np.concatenate([o.z for o in stress]), np.concatenate([o.features for o in stress]))}


def fast_path_report(version: int, splits, params: Params, cache, name: str | None = None,
                     outputs: dict[str, quality.Outputs] | None = None) -> dict:
    """The version's fast path against its float32 reference on the held-out patients and on the
    same patients under every stress shift (pipeline.evaluation.fastpath.check). Anything going wrong is a
    failed check: the fast path is an optimisation, never a requirement. `outputs`: the version's
    float32 outputs from its scoring (quality.score), the reference without a second forward pass."""

    name = model_name(name=name)
    try:
        predictor, _ = load_version(version, name)
        local = download_version(version, name)
        onnx_file = onnx_in(local)
        if onnx_file is None:
            raise FileNotFoundError("the version has no ONNX export")
        held = evaluate.sample_arrays(splits.test, predictor.image_size, params, cache)
        shifted = quality.stress_set(splits.test, params, predictor.image_size)
        stress = (np.concatenate(list(shifted.arrays.values())), np.tile(shifted.labels, len(shifted.arrays)))
        return jsonable(fastpath.check(predictor, onnx_file, {"held-out": held, "stress": stress},
                                        int8_path=onnx_in(local, int8=True),
                                        reference=_reference(outputs, splits, shifted)))
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "reason": f"check failed: {type(exc).__name__}: {exc}", "precision": "", "sets": {},
                "tried": {}}


def check_fast_path(version: int, splits, params: Params, cache, name: str | None = None,
                    outputs: dict[str, quality.Outputs] | None = None) -> dict:
    """fast_path_report, recorded on the version: tag `fast_path=on|off` with the figures. The site
    runs a version on the fast path only when it is `on` (loading.serve_version)."""
    name = model_name(name=name)
    result = fast_path_report(version, splits, params, cache, name, outputs)
    sets = result["sets"].values()
    tags = {FAST_PATH_TAG: "on" if result["ok"] else "off", f"{FAST_PATH_TAG}.reason": result["reason"][:500],
            f"{FAST_PATH_TAG}.precision": result["precision"]}
    if sets:
        tags[f"{FAST_PATH_TAG}.label_agreement"] = f"{min(r['label_agreement'] for r in sets):.4f}"
        tags[f"{FAST_PATH_TAG}.auc_delta"] = f"{max(r.get('auc_delta', 0.0) for r in sets):.4f}"
    tag_version(connect(), name, version, tags)
    return result


def training_outputs(client, name: str, version: int) -> dict[str, quality.Outputs]:
    """The float32 outputs that the version's own training run kept (reports/outputs.npz: the same
    weights on the held-out, stress, golden and local images), or {} where there are none (a version
    registered without training, an older run, a failed download): those sets are then run again.
    Only sets of the very same images are taken (quality.score compares the digests)."""
    try:
        run_id = client.get_model_version(name, str(version)).run_id
        with tempfile.TemporaryDirectory(prefix="xray-outputs-") as tmp:
            return quality.load_outputs(Path(client.download_artifacts(run_id, f"reports/{quality.OUTPUTS_FILE}", tmp)))
    except Exception as exc:  # noqa: BLE001 - an optimisation: the sets are scored instead
        log.info("v%s: no training outputs to reuse (%s: %s)", version, type(exc).__name__, exc)
        return {}


def evaluate_candidates(challenger_version: int, params: Params, data_root) -> dict:
    """Score the challenger and the current champion on the same held-out patients, the same
    patients under every stress shift, any external set and the golden set (pipeline.data.golden, when
    configured: verified against its pin first), each at its own stored threshold (a model's float32
    outputs on a set are taken from its training run when they are of the very same images:
    training_outputs; else it is run now); and compare them
    paired on those same images (DeLong for held-out, external and golden, a patient bootstrap for
    the mean AUC under shift); log the reviewer's figures on the challenger (pipeline.mlops.evidence).
    Returns plain JSON (the DAG passes it through XCom)."""
    client = connect(check_server())
    name = model_name(params)
    with timing.step("load data"):   # the golden set verified against its pin
        splits, report, cache = training_data.load(Path(data_root), params)
    champion = alias_version(client, name, CHAMPION)
    level = params.promotion.confidence

    def score(version: int, role: str) -> tuple:
        with timing.step(f"score {role}"):
            with timing.step("load"):
                predictor, _ = load_version(version, name)
                known = training_outputs(client, name, version)
            return predictor, quality.score(predictor, splits, params, cache, known)

    ch_predictor, ch = score(int(challenger_version), "challenger")
    with timing.step("fast-path check"):
        fast = check_fast_path(int(challenger_version), splits, params, cache, name, ch["outputs"])
    out = {"model_name": name, "data_root": str(data_root), "n_test": len(splits.test),
           "n_stress": ch["stress"]["n"], "n_external": len(getattr(splits, "external", []) or []),
           "n_golden": len(splits.golden), "golden": report.golden or None,
           "golden_excluded": len(report.golden_excluded),
           "challenger": {"version": int(challenger_version), "metrics": quality.flat_metrics(ch)},
           "champion": None, "comparison": None,
           "fast_path": {k: fast[k] for k in ("ok", "reason", "precision")}}
    if champion is not None:
        cp_predictor, cp = (ch_predictor, ch) if champion == int(challenger_version) else score(champion, "champion")
        out["champion"] = {"version": champion, "metrics": quality.flat_metrics(cp)}
        a, b = ch["probs"], cp["probs"]
        with timing.step("compare"):
            comparison = {"test": compare.delong(a["test"]["y"], a["test"]["p"], b["test"]["p"], level).to_dict(),
                          "stress": compare.paired_bootstrap(
                              a["stress"]["y"], a["stress"]["p"], b["stress"]["p"],
                              params.promotion.bootstrap_samples, params.data.seed, level).to_dict()}
            for key in ("external", "golden", "local"):
                if key in a:
                    comparison[key] = compare.delong(a[key]["y"], a[key]["p"], b[key]["p"], level).to_dict()
        out["comparison"] = comparison
    # figures for the reviewer, from the predictions above (Grad-CAM only for the films shown)
    with timing.step("evidence"):
        out["evidence"] = log_evidence(client, name, int(challenger_version), ch_predictor, splits, params, cache,
                                       ch, (champion, cp_predictor, cp) if champion is not None else None)
    if "local" in ch["probs"]:   # for the promoted version's own site operating point (site_version.adapt)
        local = ch["probs"]["local"]
        out["local_cases"] = {"ids": list(local["keys"]), "y": [int(v) for v in local["y"]],
                              "groups": list(local["groups"]), "logits": [float(v) for v in local["p"]]}
    return jsonable(out)
