"""The review evidence of a challenger, logged where a reviewer finds it: the figures of
pipeline.evaluation.evidence as artifacts under `evidence/` of the version's training run, and a
section of its model card (the version's description) linking to each of them.

Called by candidates.evaluate_candidates with the predictions it already made. A failure to draw
or log is reported in the result and on the card, never raised: the decision rests on the figures,
the evidence is for the person who reads them.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from pipeline.evaluation import evidence
from pipeline.mlops import model_card
from pipeline.mlops.server import ui_url
from pipeline.settings.params import Params

log = logging.getLogger(__name__)

ARTIFACT_DIR = "evidence"


def log_evidence(client, name: str, version: int, predictor, splits, params: Params, cache, scored: dict,
                 champion: tuple[int, object, dict] | None = None) -> dict:
    """Draw and log the evidence of `version` (its predictor and quality.score result), against
    `champion` = (version, predictor, scored). Returns a small summary: where, what, how long, or
    the error."""
    t0 = time.perf_counter()
    mv = client.get_model_version(name, str(version))
    try:
        with tempfile.TemporaryDirectory(prefix="xray-evidence-") as tmp:
            index = evidence.write(Path(tmp), predictor, int(version), splits, params, cache, scored, champion)
            client.log_artifacts(mv.run_id, tmp, ARTIFACT_DIR)
        experiment = client.get_run(mv.run_id).info.experiment_id
        link = f"{ui_url()}/#/experiments/{experiment}/runs/{mv.run_id}/artifacts/{ARTIFACT_DIR}"
        section = model_card.evidence_section(index, link)
    except Exception as exc:  # noqa: BLE001 - reported on the card and in the result, see the docstring
        log.warning("evidence of v%s not logged: %s: %s", version, type(exc).__name__, exc)
        reason = f"{type(exc).__name__}: {exc}"[:500]
        index, link = {"error": reason}, None
        section = f"{model_card.EVIDENCE_HEADING} not drawn ({reason})."
    card = client.get_model_version(name, str(version)).description or ""
    client.update_model_version(name, str(version), description=model_card.with_evidence(card, section))
    summary = {"run_id": mv.run_id, "artifact_dir": ARTIFACT_DIR, "link": link,
               "seconds": round(time.perf_counter() - t0, 2)}
    if "error" in index:
        return {**summary, "error": index["error"]}
    files = [e["file"] for e in index["galleries"] + index["curves"]] + \
        ([index["stress"]["file"]] if index["stress"] else []) + ["index.json", "curves.json"]
    return {**summary, "draw_seconds": index["seconds"], "files": files,
            "errors": {f"{g['set']}/{g['kind']}": g["errors"] for g in index["galleries"]}}
