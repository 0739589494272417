"""Re-export a version registered before the serving tier existed.

The site answers from a version's ONNX file without torch (pipeline.inference.served) and needs two
things older versions lack: the class activation map as a graph output (the heat map) and
serving.json (threshold, calibration, gate). Registered versions are immutable, so the same
checkpoint is registered again as a new version with those files, checked like every registration
(ONNX Runtime against PyTorch: logits and heat maps), without an int8 copy (the fast path's check
belongs to the DAG's evaluation; until then the version is served from its float32 file, which
computes what the old version computed). `promote`: the champion alias moves to it when the old
version is the champion (a manual promotion in the audit trail, same weights, threshold and
calibration). Runs where the training tools are installed (the Airflow image, a developer's .venv).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.mlops import aliases, loading, tracking
from pipeline.mlops.server import CHAMPION, alias_version, check_server, connect, model_name, now
from pipeline.mlops.site_version import WEIGHTS_TAG, weights_version
from pipeline.model.artifacts import checkpoint_in
from pipeline.settings.params import Params

REEXPORT_TAG = "reexport_of"
CARRIED_TAGS = ("data.", "site.")  # what the version was trained / fitted on: still true of the copy


def reexport(version: int, params: Params, data_root: Path | None = None, promote: bool = False,
             name: str | None = None) -> dict:
    """Register v`version`'s checkpoint again with the serving files; returns {"version",
    "reexported_as", "promoted", "reason"}."""
    client = connect(check_server())
    name = model_name(params, name)
    version = int(version)
    old = client.get_model_version(name, str(version))
    local = loading.download_version(version, name, client)
    result = tracking.register_checkpoint(checkpoint_in(local), params, run_name=f"reexport-v{version}",
                                          tags={"trigger": "reexport", REEXPORT_TAG: str(version)},
                                          data_root=data_root, alias=False)
    new = int(result["version"])
    carried = {k: v for k, v in (old.tags or {}).items() if k.startswith(CARRIED_TAGS)}
    carried.update({WEIGHTS_TAG: weights_version(client, name, version), REEXPORT_TAG: str(version)})
    for key, value in carried.items():
        client.set_model_version_tag(name, str(new), key, value)
    out = {"version": version, "reexported_as": new, "promoted": False,
           "reason": f"v{new} registered with the serving files; not promoted"}
    if not promote:
        return out
    champion = alias_version(client, name, CHAMPION)
    if champion != version:
        out["reason"] = f"v{new} registered; not promoted: v{version} is not the champion (v{champion} is)"
        return out
    problems = loading.serving_check(new, name)
    if problems:
        out["reason"] = f"v{new} registered; not promoted: " + "; ".join(problems)
        return out
    moved = aliases.promote(new, {"reason": f"re-export of v{version} for the serving tier (same weights, "
                                            f"threshold and calibration)", "champion_version": version,
                                  "decided_at": now()}, name=name, force=True)
    return {**out, "promoted": bool(moved["promoted"]), "reason": moved["reason"]}
