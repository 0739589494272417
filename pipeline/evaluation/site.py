"""The site's operating point: calibration and threshold fitted on the hospital's own confirmed films.

Why: the champion is calibrated and thresholded on the training hospital's patients. Scored on another
period's films it kept its ranking (AUC 0.978) but not its probabilities (ECE 0.139) nor its
specificity (0.78 at the served threshold). Ranking is the network's; calibration and threshold are
two numbers and a cut that a site's confirmed cases can refit without touching the weights.

How (all of it from the cases' stored logits; no image is read):
- Platt scaling (pipeline.model.calibration.fit) on the local logits.
- The threshold is the highest one whose sensitivity, as a one-sided Clopper-Pearson lower bound at
  `confidence`, still reaches the target: a point estimate on 100 positives would miss the target on
  the next 100 about half the time.
- Cross-fitting: patients are dealt into `folds`; each fold is answered by a calibration and
  threshold fitted on the other folds. The figures reported (and checked against the floors and the
  current answer) are these out-of-fold answers, so no case judges the fit it took part in. The fit
  that is served is the one on all cases.
- Refusal: too few cases, or too few of either class, and nothing is fitted; the reason says how many
  more are needed.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.evaluation.evaluate import roc_auc
from pipeline.model.calibration import Calibration, ece, fit as fit_calibration
from pipeline.settings.params import Site


MIN_SLOPE = 1e-3  # the refit may flatten the network's scale, never turn its ranking around


@dataclass
class Answers:
    """An operating point's figures on labelled cases, with 95 % intervals and counts."""
    n: int
    positives: int
    negatives: int
    sensitivity: float
    sensitivity_ci: tuple[float, float]
    specificity: float
    specificity_ci: tuple[float, float]
    auc: float
    ece: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SiteFit:
    accepted: bool
    reason: str                                # why it is (not) served, one line
    calibration: Calibration | None = None     # fitted on all cases (None: refused before fitting)
    threshold: float | None = None
    before: Answers | None = None              # the current answer on the same cases
    after: Answers | None = None               # the site's answer, out of fold
    checks: list[str] = field(default_factory=list)  # failed checks ([] when accepted)
    cases_digest: str = ""                     # which cases (ids and labels) it was fitted on

    def to_dict(self) -> dict:
        d = asdict(self)
        d["calibration"] = self.calibration.to_dict() if self.calibration else None
        return d


def clopper_pearson(k: int, n: int, confidence: float = 0.95, side: str = "two") -> tuple[float, float]:
    """Exact binomial interval of k successes in n. side="lower": one-sided, (bound, 1)."""
    from scipy.stats import beta

    if n == 0:
        return 0.0, 1.0
    alpha = 1 - confidence if side == "lower" else (1 - confidence) / 2
    lo = float(beta.ppf(alpha, k, n - k + 1)) if k > 0 else 0.0
    hi = 1.0 if side == "lower" or k == n else float(beta.ppf(1 - alpha, k + 1, n - k))
    return lo, hi


def bounded_threshold(y, prob, target: float, confidence: float) -> float:
    """Highest t such that the one-sided Clopper-Pearson lower bound of the sensitivity of
    `prob >= t` reaches `target`; the lowest positive's probability when none does."""
    positives = np.sort(np.asarray(prob, np.float64)[np.asarray(y) == 1])[::-1]
    n = positives.size
    for k in range(1, n + 1):  # k positives called PNEUMONIA at t = the k-th highest positive
        if k < n and positives[k] == positives[k - 1]:
            continue  # ties: t calls all of them
        if clopper_pearson(k, n, confidence, side="lower")[0] >= target:
            return float(positives[k - 1])
    return float(positives[-1]) if n else 0.5


def answers(y, prob, threshold) -> Answers:
    """Figures of `prob >= threshold` (threshold: a number, or one per case when cross-fitted)."""
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, np.float64)
    called = prob >= np.asarray(threshold, np.float64)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    tp, tn = int((called & (y == 1)).sum()), int((~called & (y == 0)).sum())
    return Answers(n=len(y), positives=pos, negatives=neg,
                   sensitivity=tp / pos if pos else float("nan"), sensitivity_ci=clopper_pearson(tp, pos),
                   specificity=tn / neg if neg else float("nan"), specificity_ci=clopper_pearson(tn, neg),
                   auc=roc_auc(y, prob) if pos and neg else float("nan"), ece=ece(y, prob))


def folds_of(groups, k: int, seed: int = 0) -> np.ndarray:
    """Fold index per case, the same for every case of one patient (group), by a seeded hash: a
    patient's films never sit on both sides of a fit."""
    def fold(g) -> int:
        return int(hashlib.sha256(f"{seed}:{g}".encode()).hexdigest(), 16) % k
    return np.array([fold(g) for g in groups], dtype=int)


def share_of(group: str, train_share: float) -> str:
    """"train" for the patients exported for training (a seeded hash of the patient key, so a patient
    never moves), "local" for those that fit and judge operating points: never both."""
    bucket = int(hashlib.sha256(f"train-share:{group}".encode()).hexdigest()[:16], 16) / 16 ** 16
    return "train" if bucket < train_share else "local"


def fit_point(logits, y, settings: Site) -> tuple[Calibration, float]:
    """Calibration and threshold on these cases (no refusal check: see `fit`)."""
    cal = fit_calibration(logits, y, min_slope=MIN_SLOPE)
    return cal, bounded_threshold(y, cal.probability(logits), settings.target_sensitivity, settings.confidence)


def cross_fitted(logits, y, groups, settings: Site) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities and thresholds: each case answered by the fit on the other folds."""
    logits, y = np.asarray(logits, np.float64), np.asarray(y).astype(int)
    fold = folds_of(groups, settings.folds)
    prob, thr = np.empty_like(logits), np.empty_like(logits)
    for f in range(settings.folds):
        held = fold == f
        if not held.any():
            continue
        cal, t = fit_point(logits[~held], y[~held], settings)
        prob[held], thr[held] = cal.probability(logits[held]), t
    return prob, thr


def refusal(y, settings: Site) -> str:
    """Why these cases are not enough to fit on ("" when they are)."""
    y = np.asarray(y).astype(int)
    n, pos, neg = len(y), int((y == 1).sum()), int((y == 0).sum())
    short = []
    if n < settings.min_cases:
        short.append(f"{n} confirmed cases, at least {settings.min_cases} are needed")
    if pos < settings.min_per_class:
        short.append(f"{pos} PNEUMONIA, at least {settings.min_per_class} are needed")
    if neg < settings.min_per_class:
        short.append(f"{neg} NORMAL, at least {settings.min_per_class} are needed")
    return "; ".join(short)


def digest(ids, y) -> str:
    text = "\n".join(f"{i}:{int(t)}" for i, t in sorted(zip(map(str, ids), y)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit(logits, y, groups, current: tuple[Calibration, float], settings: Site, ids=None) -> SiteFit:
    """Fit the site's operating point on confirmed cases and check it against the current answer
    (`current`: its calibration and threshold) on the same cases.

    Accepted when the out-of-fold figures pass `settings.floors` and the site's answer is not worse
    than the current one: its sensitivity and specificity (Youden's J) may lose at most
    `settings.margin`, and it must gain on J or on ECE (otherwise there is nothing to serve)."""
    logits, y = np.asarray(logits, np.float64), np.asarray(y).astype(int)
    ids = list(range(len(y))) if ids is None else list(ids)
    cases = digest(ids, y)
    why = refusal(y, settings)
    if why:
        return SiteFit(False, f"not fitted: {why}", cases_digest=cases)
    cur_cal, cur_thr = current
    before = answers(y, cur_cal.probability(logits), cur_thr)
    prob, thr = cross_fitted(logits, y, groups, settings)
    after = answers(y, prob, thr)
    cal, threshold = fit_point(logits, y, settings)
    checks = _checks(before, after, settings)
    reason = "; ".join(checks) if checks else (
        f"site answer better on {after.n} cases: sensitivity {before.sensitivity:.3f} -> {after.sensitivity:.3f}, "
        f"specificity {before.specificity:.3f} -> {after.specificity:.3f}, ECE {before.ece:.3f} -> {after.ece:.3f}")
    return SiteFit(not checks, reason, cal, threshold, before, after, checks, cases)


def _checks(before: Answers, after: Answers, settings: Site) -> list[str]:
    failed = [f"out-of-fold {m} {getattr(after, m):.3f} < floor {floor:.3f}"
              for m, floor in settings.floors.items() if not getattr(after, m) >= floor]
    j_before = before.sensitivity + before.specificity - 1
    j_after = after.sensitivity + after.specificity - 1
    if j_after < j_before - settings.margin:
        failed.append(f"Youden J {j_after:.3f} below the current answer's {j_before:.3f} by more than "
                      f"{settings.margin}")
    if not (j_after > j_before or after.ece < before.ece):
        failed.append(f"no gain over the current answer (J {j_before:.3f} -> {j_after:.3f}, "
                      f"ECE {before.ece:.3f} -> {after.ece:.3f})")
    return failed
