"""Input drift: are the images sent to the model still like the ones it was trained on?

A stream of served requests (gate score, answer, refused or not) is compared with the champion's
own reference, stored by `pipeline.training.gate_fit.fit` in its checkpoint: the deciles of the validation
X-rays' feature distance and the share of them answered PNEUMONIA. Three signals:
- PSI (population stability index) of the feature distance over the reference deciles: 0 when
  the inputs look like validation X-rays, > 0.25 is the usual "shifted" level;
- the refusal rate of the gate (a wrong image source, a new device, a misconfigured export);
- the PNEUMONIA rate vs the reference rate (case mix or calibration moved).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.settings.params import Drift


@dataclass
class DriftReport:
    n: int
    n_refused: int
    refusal_rate: float
    positive_rate: float | None      # among answered requests
    reference_positive_rate: float | None
    psi: float | None                # feature distance vs the reference deciles
    mean_score: float | None
    reference_median_score: float | None
    share_above_p90: float | None    # expected 0.10 when nothing moved
    alerts: list[str] = field(default_factory=list)
    limits: dict = field(default_factory=dict)
    confirmed: int | None = None     # confirmed local cases behind the served operating point
    operating_point: str = ""        # "verified on N confirmed cases" | "unverified: ... how to fix it"

    @property
    def drifted(self) -> bool:
        return bool(self.alerts)

    def to_dict(self) -> dict:
        return {**asdict(self), "drifted": self.drifted}

    def metrics(self) -> dict:
        """The numeric fields, for MLflow (None left out)."""
        keys = ("n", "n_refused", "refusal_rate", "positive_rate", "reference_positive_rate", "psi",
                "mean_score", "reference_median_score", "share_above_p90", "confirmed")
        out = {f"drift_{k}": float(getattr(self, k)) for k in keys if getattr(self, k) is not None}
        out["drift_alert"] = float(self.drifted)
        return out

    def summary(self) -> str:
        def fmt(x, pct=False):
            return "n/a" if x is None else (f"{x:.1%}" if pct else f"{x:.3f}")
        lines = [f"{self.n} requests, {self.n_refused} refused ({fmt(self.refusal_rate, True)}); "
                 f"PNEUMONIA rate {fmt(self.positive_rate, True)} (reference {fmt(self.reference_positive_rate, True)}); "
                 f"feature-distance PSI {fmt(self.psi)}, above the reference p90: {fmt(self.share_above_p90, True)}"]
        if self.operating_point:
            lines.append(f"site operating point: {self.operating_point}")
        lines += [f"ALERT: {a}" for a in self.alerts]
        return "\n".join(lines)


def psi(values: np.ndarray, quantiles) -> float:
    """Population stability index of `values` over the bins cut at the reference's inner deciles
    (each bin holds 10 % of the reference)."""
    q = np.asarray(quantiles, np.float64)
    edges = q[1:-1]
    observed = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    o = np.maximum(observed / max(1, len(values)), 1e-4)
    e = np.full_like(o, 1.0 / len(o))
    return float(np.sum((o - e) * np.log(o / e)))


def report(records: list[dict], reference: dict | None, limits: Drift, confirmed: int | None = None,
           min_confirmed: int = 50) -> DriftReport:
    """records: {"gate_score": float | None, "label": "NORMAL" | "PNEUMONIA" | "", "refused": bool}.
    reference: the gate state's "reference" (None: old model without a learned gate).
    limits: params.yaml `drift:`. confirmed: the site's confirmed cases answered by the served
    weights (None: not known); fewer than `min_confirmed` (params site.min_cases) leaves the served
    operating point unverified at this site, an alert once the inputs have moved (`_verification`)."""
    reference = reference or {}
    n = len(records)
    refused = sum(bool(r.get("refused")) for r in records)
    answered = [r for r in records if not r.get("refused")]
    positive = (sum(r.get("label") == "PNEUMONIA" for r in answered) / len(answered)) if answered else None
    ref_pos = reference.get("positive_rate")
    scores = np.array([r["gate_score"] for r in records if r.get("gate_score") is not None
                       and math.isfinite(r["gate_score"])], np.float64)
    quantiles = reference.get("distance_quantiles")
    value_psi = above = median = None
    if quantiles and len(scores):
        value_psi = psi(scores, quantiles)
        above = float((scores > quantiles[9]).mean())
        median = float(quantiles[5])
    rep = DriftReport(n=n, n_refused=refused, refusal_rate=refused / n if n else 0.0, positive_rate=positive,
                      reference_positive_rate=ref_pos, psi=value_psi,
                      mean_score=float(scores.mean()) if len(scores) else None,
                      reference_median_score=median, share_above_p90=above, limits=asdict(limits))
    if n < limits.min_records:
        _verification(rep, limits, confirmed, min_confirmed, moved=False)
        return rep  # too few requests to say anything
    if value_psi is not None and value_psi > limits.psi:
        rep.alerts.append(f"the inputs' feature distance moved away from the training X-rays "
                          f"(PSI {value_psi:.2f} > {limits.psi})")
    if rep.refusal_rate > limits.refusal_rate:
        rep.alerts.append(f"{rep.refusal_rate:.0%} of the inputs were refused (> {limits.refusal_rate:.0%})")
    if positive is not None and ref_pos is not None and abs(positive - ref_pos) > limits.positive_rate_shift:
        rep.alerts.append(f"PNEUMONIA rate {positive:.0%} vs {ref_pos:.0%} on validation "
                          f"(shift > {limits.positive_rate_shift:.0%})")
    _verification(rep, limits, confirmed, min_confirmed,
                  moved=bool(rep.alerts) or (value_psi is not None and value_psi > limits.psi_watch))
    return rep


def _verification(rep: DriftReport, limits: Drift, confirmed: int | None, min_confirmed: int, moved: bool) -> None:
    """Why: films of another period kept their ranking but lost calibration and specificity, with a
    PSI (0.09) under the alert level. Whether the served threshold holds here is a question only
    the site's confirmed cases answer; with too few of them and inputs that moved, say so."""
    rep.confirmed = confirmed
    if confirmed is None:
        return
    if confirmed >= min_confirmed:
        rep.operating_point = f"verified on {confirmed} confirmed local cases"
        return
    rep.operating_point = (
        f"unverified: {confirmed} confirmed local cases (at least {min_confirmed} are needed) back the served "
        "threshold and calibration at this site. Fix: doctors confirm results on their result pages (or "
        "the API), or bring films with known diagnoses: `python -m pipeline site import --data DIR` "
        "(DIR/NORMAL, DIR/PNEUMONIA), then `python -m pipeline site adapt`")
    if moved:
        rep.alerts.append(f"the inputs moved (PSI {rep.psi if rep.psi is not None else float('nan'):.2f}) and the "
                          f"site's operating point is {rep.operating_point}")

def log_to_mlflow(rep: DriftReport, experiment: str, run_name: str, tags: dict | None = None) -> str:
    """One MLflow run per report: the metrics, and the report as JSON. Returns the run id."""
    import mlflow

    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags={"kind": "drift", **(tags or {})}) as run:
        mlflow.log_params({f"drift.limit.{k}": v for k, v in rep.limits.items()})
        mlflow.log_metrics(rep.metrics())
        mlflow.log_text(json.dumps(rep.to_dict(), indent=2), "drift_report.json")
        return run.info.run_id
