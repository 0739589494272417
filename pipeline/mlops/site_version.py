"""The site's answer as a registered version: the champion's weights with the calibration and
threshold fitted on the site's confirmed cases (pipeline.evaluation.site).

`adapt` fits, checks and, when the checks pass, registers a new version (same weights and ONNX
files, new checkpoint fields `calibration`, `threshold` and `site`) with lineage tags, and promotes it
through the promotion lock (pipeline.mlops.aliases), so `models:/<name>@champion` returns the site's
answer in the site, the API and the pyfunc alike.

The policy for such a version is the site's: its weights are the champion's, already judged by the
promotion policy on held-out data and under shift; what changes is the operating point, judged out of
fold on the local cases (floors, and no worse than the current answer). A version whose case set is
the one the champion was fitted on is not fitted again.

Lineage tags: site.parent_version (the champion it adapts), site.weights_version (the version that
trained these weights: logits of any version sharing it are the same numbers), site.cases (digest of
the case ids and labels), site.n / site.positives / site.negatives, trigger=site-adapt.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from pipeline.evaluation import site
from pipeline.mlops import aliases
from pipeline.mlops.loading import download_version
from pipeline.mlops.server import CHAMPION, NoChampion, alias_version, check_server, connect, model_name, now
from pipeline.mlops.tracking import register_operating_point
from pipeline.model.artifacts import checkpoint_in
from pipeline.model.calibration import Calibration
from pipeline.settings.params import Params

WEIGHTS_TAG, PARENT_TAG, CASES_TAG = "site.weights_version", "site.parent_version", "site.cases"


class LocalCase(Protocol):
    id: str
    label: int               # 1 PNEUMONIA, 0 NORMAL
    logit: float | None      # the raw output of the version that answered (None: not kept)
    model_version: str
    group: str               # patient key


def weights_version(client, name: str, version: str | int) -> str:
    """The version whose training produced these weights ("" for an unknown version)."""
    try:
        tags = client.get_model_version(name, str(version)).tags
    except Exception:  # noqa: BLE001  (a deleted or foreign version: its logits are not reused)
        return ""
    return tags.get(WEIGHTS_TAG) or str(version)


def champion_logits(client, name: str, champion: int, cases: Sequence[LocalCase],
                    rescore: Callable[[list], list[float]] | None) -> np.ndarray:
    """Each case's logit under the champion's weights: the stored one when the version that answered
    has the same weights, else `rescore` (the stored image through the champion)."""
    mine = weights_version(client, name, champion)
    same = {v: weights_version(client, name, v) == mine for v in {c.model_version for c in cases}}
    logits = np.array([c.logit if c.logit is not None and same[c.model_version] else np.nan for c in cases])
    missing = [i for i, v in enumerate(logits) if np.isnan(v)]
    if missing:
        if rescore is None:
            raise ValueError(f"{len(missing)} cases were answered by other weights and no rescoring was given")
        logits[missing] = rescore([cases[i] for i in missing])
    return logits


def adapt(cases: Sequence[LocalCase], params: Params, *, name: str | None = None,
          rescore: Callable[[list], list[float]] | None = None, dry_run: bool = False) -> dict:
    """Fit the site's operating point on `cases` for the champion; register and promote it when the
    checks pass. Returns {"fit", "champion", "version", "promoted", "reason"}."""
    import torch

    client = connect(check_server())
    name = model_name(params, name)
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        raise NoChampion(f"no champion for {name}: a site operating point adapts the champion; run the DAG first")
    logits = champion_logits(client, name, champion, cases, rescore)
    model_dir = download_version(champion, name=name, client=client)
    ckpt = torch.load(checkpoint_in(model_dir), map_location="cpu", weights_only=True)
    current = (Calibration.from_dict(ckpt.get("calibration")), float(ckpt["threshold"]))
    fitted = site.fit(logits, [c.label for c in cases], [c.group for c in cases], current, params.site,
                      ids=[c.id for c in cases])
    out = {"champion": champion, "fit": fitted.to_dict(), "version": None, "promoted": False,
           "reason": fitted.reason, "current": {"calibration": current[0].to_dict(), "threshold": current[1]}}
    if client.get_model_version(name, str(champion)).tags.get(CASES_TAG) == fitted.cases_digest:
        out["reason"] = f"champion v{champion} was fitted on these {len(cases)} cases already: nothing to do"
        return out
    if not fitted.accepted or dry_run:
        return out
    version = _register(client, name, champion, model_dir, ckpt, fitted, params, len(cases))
    decision = {"reason": f"site operating point for v{champion}: {fitted.reason}", "champion_version": champion,
                "decided_at": now(), "site": fitted.to_dict(), "kind": "site_adaptation"}
    promoted = aliases.promote(version, decision, name=name)
    return {**out, "version": version, "promoted": promoted["promoted"], "reason": promoted["reason"]}


@dataclass
class ScoredCase:
    """A local case scored by a known version (the DAG's local/ set, pipeline.mlops.candidates)."""
    id: str
    label: int
    logit: float
    model_version: str
    group: str


def adapt_version(version: int, local: dict, params: Params, name: str | None = None) -> dict:
    """adapt() for a just-promoted `version` on the local/ cases it was scored on (evaluate_candidates'
    "local_cases": ids, y, groups, logits). Never raises: the promotion stands whatever happens here."""
    cases = [ScoredCase(str(i), int(y), float(z), str(version), str(g))
             for i, y, z, g in zip(local["ids"], local["y"], local["logits"], local["groups"])]
    try:
        out = adapt(cases, params, name=name)
    except Exception as exc:  # noqa: BLE001  (the registry or the fit failed: the daily site task retries)
        return {"promoted": False, "version": None, "reason": f"site operating point not made: {exc}"}
    return {k: out[k] for k in ("promoted", "version", "reason")}


def _register(client, name: str, champion: int, model_dir: Path, ckpt: dict, fitted: site.SiteFit,
              params: Params, n: int) -> int:
    import torch

    ckpt = {**ckpt, "calibration": fitted.calibration.to_dict(), "threshold": float(fitted.threshold),
            "site": {"parent_version": champion, "cases": fitted.cases_digest, "fitted_at": now(),
                     "before": fitted.before.to_dict(), "after": fitted.after.to_dict()}}
    tags = {"trigger": "site-adapt", PARENT_TAG: str(champion), WEIGHTS_TAG: weights_version(client, name, champion),
            CASES_TAG: fitted.cases_digest, "site.n": str(n), "site.positives": str(fitted.after.positives),
            "site.negatives": str(fitted.after.negatives)}
    for key, value in client.get_model_version(name, str(champion)).tags.items():
        if key.startswith(("fast_path", "onnx.", "data.")):  # same network: same fast-path verdict and data
            tags.setdefault(key, value)
    metrics = {f"site.{when}.{k}": getattr(a, k) for when, a in (("before", fitted.before), ("after", fitted.after))
               for k in ("sensitivity", "specificity", "auc", "ece")}
    with tempfile.TemporaryDirectory(prefix="xray-site-") as tmp:
        path = Path(tmp) / "model.pt"
        torch.save(ckpt, path)
        return register_operating_point(path, model_dir, params, tags, metrics,
                                        card(client, name, champion, fitted, params), name=name)


def card(client, name: str, champion: int, fitted: site.SiteFit, params: Params) -> str:
    """The parent's model card with a section on the site's operating point, figures with intervals."""
    parent = (client.get_model_version(name, str(champion)).description or "").split(aliases.DECISION_HEADING)[0]
    b, a = fitted.before, fitted.after

    def row(label, before, after):
        return f"| {label} | {before} | {after} |"

    def rate(x, ci, k_of):
        return f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (of {k_of})"

    s = params.site
    return "\n".join([
        parent.rstrip(), "", f"### Site operating point (adapted from v{champion})", "",
        f"Calibration and threshold refitted on **{a.n} confirmed local cases** ({a.positives} PNEUMONIA, "
        f"{a.negatives} NORMAL); the weights are v{champion}'s. Threshold {fitted.threshold:.4f}: the highest whose "
        f"sensitivity reaches {s.target_sensitivity} as a one-sided Clopper-Pearson bound at {s.confidence}. "
        f"Figures on the same cases, the site's answer out of fold ({s.folds} folds by patient); 95 % intervals.", "",
        "| figure | before (current answer) | after (site, out of fold) |", "|---|---|---|",
        row("sensitivity", rate(b.sensitivity, b.sensitivity_ci, b.positives),
            rate(a.sensitivity, a.sensitivity_ci, a.positives)),
        row("specificity", rate(b.specificity, b.specificity_ci, b.negatives),
            rate(a.specificity, a.specificity_ci, a.negatives)),
        row("AUC", f"{b.auc:.3f}", f"{a.auc:.3f}"), row("ECE (10 bins)", f"{b.ece:.3f}", f"{a.ece:.3f}"),
        "", f"Case set `{fitted.cases_digest}`.",
    ])
