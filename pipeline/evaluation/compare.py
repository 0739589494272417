"""Paired comparison of two models scored on the same images: DeLong's test for correlated AUCs.

Champion and challenger are scored on the same held-out patients, so their AUCs are correlated and
the difference is far more precise than two separate intervals suggest. DeLong, DeLong &
Clarke-Pearson (1988) give the covariance of the two AUC estimates from the placement values of
each positive and negative image; Sun & Xu (2014) compute them from mid-ranks in O(n log n).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm, rankdata


@dataclass(frozen=True)
class PairedAUC:
    auc_a: float
    auc_b: float
    delta: float          # auc_a - auc_b
    se: float             # standard error of delta
    low: float            # confidence interval of delta
    high: float
    p_value: float        # two-sided, H0: equal AUCs
    n_pos: int
    n_neg: int
    level: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def _placements(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC, and the structural components V10 (per positive) and V01 (per negative)."""
    pos, neg = scores[y == 1], scores[y == 0]
    m, n = len(pos), len(neg)
    r_all = rankdata(np.concatenate([pos, neg]))
    r_pos, r_neg = rankdata(pos), rankdata(neg)
    v10 = (r_all[:m] - r_pos) / n          # fraction of negatives below each positive (ties half)
    v01 = 1.0 - (r_all[m:] - r_neg) / m    # fraction of positives above each negative
    return float(v10.mean()), v10, v01


def delong(y, scores_a, scores_b, level: float = 0.95) -> PairedAUC:
    """DeLong test of AUC(a) - AUC(b) on the same labelled images (any monotone scores)."""
    y = np.asarray(y).astype(int)
    a, b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    if not (len(y) == len(a) == len(b)):
        raise ValueError("labels and both score vectors must have the same length")
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives (got {m} and {n})")
    auc_a, v10a, v01a = _placements(a, y)
    auc_b, v10b, v01b = _placements(b, y)
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    se = math.sqrt(max(var, 0.0))
    delta = auc_a - auc_b
    zq = norm.ppf(0.5 + level / 2)
    if se == 0.0:  # identical rankings (or both perfect): no evidence of a difference
        p = 1.0 if delta == 0 else 0.0
    else:
        p = float(2 * norm.sf(abs(delta) / se))
    return PairedAUC(auc_a, auc_b, delta, se, float(delta - zq * se), float(delta + zq * se), p, m, n, level)


@dataclass(frozen=True)
class PairedDelta:
    """Bootstrap interval of mean-over-sets AUC(a) - AUC(b) on the same images."""
    mean_a: float
    mean_b: float
    delta: float
    low: float
    high: float
    n: int
    resamples: int
    level: float = 0.95

    def to_dict(self) -> dict:
        return asdict(self)


def _auc_matrix(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each row of scores [..., n] against labels y [..., n] (Mann-Whitney, ties counted half),
    all rows at once: the bootstrap needs thousands of them."""
    ranks = rankdata(scores, axis=-1)
    n_pos = y.sum(axis=-1)
    n_neg = y.shape[-1] - n_pos
    return ((ranks * y).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / np.maximum(n_pos * n_neg, 1)


def paired_bootstrap(y, sets_a: dict, sets_b: dict, resamples: int = 300, seed: int = 0,
                     level: float = 0.95) -> PairedDelta:
    """Mean AUC over the shifted copies of the same images, model a minus model b, with a percentile
    interval from resampling *images* (each image keeps all its shifted copies and both models'
    scores, so the correlation between shifts and between models is preserved)."""
    y = np.asarray(y).astype(int)
    names = sorted(set(sets_a) & set(sets_b))
    if not names:
        raise ValueError("no shift scored for both models")
    if (y == 1).sum() < 2 or (y == 0).sum() < 2:
        raise ValueError("paired bootstrap needs at least 2 positives and 2 negatives")
    a = np.stack([np.asarray(sets_a[k], np.float64) for k in names])   # [shifts, n]
    b = np.stack([np.asarray(sets_b[k], np.float64) for k in names])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(resamples, len(y)))
    yy = y[idx]                                                        # [R, n]
    deltas = (_auc_matrix(yy, a[:, idx]) - _auc_matrix(yy, b[:, idx])).mean(axis=0)   # [shifts, R] -> [R]
    mean_a, mean_b = float(_auc_matrix(y, a).mean()), float(_auc_matrix(y, b).mean())
    lo, hi = np.nanpercentile(deltas, [50 * (1 - level), 100 - 50 * (1 - level)])
    return PairedDelta(mean_a, mean_b, mean_a - mean_b, float(lo), float(hi), int(len(y)), resamples, level)


def _interval(value: float, low: float, high: float) -> dict:
    clean = lambda v: None if v is None or not math.isfinite(v) else float(v)  # noqa: E731
    return {"value": clean(value), "low": clean(low), "high": clean(high)}


def _boot_figures(y: np.ndarray, prob: np.ndarray, called: np.ndarray, bins: int = 10) -> dict[str, np.ndarray]:
    """Sensitivity, specificity and ECE (calibration.ece's equal-width bins) of each row of [R, n]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        pos, neg = y.sum(-1), (1 - y).sum(-1)
        sens = np.where(pos > 0, (called & (y == 1)).sum(-1) / pos, np.nan)
        spec = np.where(neg > 0, (~called & (y == 0)).sum(-1) / neg, np.nan)
    which = np.clip(np.digitize(prob, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    gap = sum(np.abs(np.where(which == b, y - prob, 0.0).sum(-1)) for b in range(bins))
    return {"sensitivity": sens, "specificity": spec, "ece": gap / y.shape[-1]}


def paired_answers(y, prob_a, threshold_a, prob_b, threshold_b, resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict:
    """Two models' answers on the same confirmed cases, each with its own probabilities and threshold:
    per model, sensitivity and specificity with exact (Clopper-Pearson, site.answers) intervals and ECE
    with a bootstrap percentile interval; and the paired difference a - b of each, from resampling
    *cases* (both models' answers on a case stay together, so their correlation is kept)."""
    from pipeline.evaluation.site import answers

    y = np.asarray(y).astype(int)
    probs = [np.asarray(prob_a, np.float64), np.asarray(prob_b, np.float64)]
    thresholds = [np.asarray(threshold_a, np.float64), np.asarray(threshold_b, np.float64)]
    called = [p >= t for p, t in zip(probs, thresholds)]
    if not len(y):
        return {"n": 0, "positives": 0, "negatives": 0, "a": None, "b": None, "difference": None,
                "resamples": resamples, "level": level}
    idx = np.random.default_rng(seed).integers(0, len(y), size=(resamples, len(y)))
    boot = [_boot_figures(y[idx], p[idx], c[idx]) for p, c in zip(probs, called)]
    q = [50 * (1 - level), 100 - 50 * (1 - level)]

    def pct(values: np.ndarray) -> tuple[float, float]:
        return tuple(np.nanpercentile(values, q)) if np.isfinite(values).any() else (float("nan"),) * 2

    out = {"n": int(len(y)), "positives": int(y.sum()), "negatives": int((1 - y).sum()),
           "resamples": resamples, "level": level}
    points = [answers(y, p, t) for p, t in zip(probs, thresholds)]
    nan = (float("nan"),) * 3
    for key, a, b in zip(("a", "b"), points, boot):
        out[key] = {"sensitivity": _interval(*((a.sensitivity, *a.sensitivity_ci) if a.positives else nan)),
                    "specificity": _interval(*((a.specificity, *a.specificity_ci) if a.negatives else nan)),
                    "ece": _interval(a.ece, *pct(b["ece"]))}
    out["difference"] = {k: _interval(getattr(points[0], k) - getattr(points[1], k), *pct(boot[0][k] - boot[1][k]))
                         for k in ("sensitivity", "specificity", "ece")}
    return out
