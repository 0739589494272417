"""Calibration: the probability a doctor reads must be a probability.

A network trained with a class-balanced loss and early stopping on AUC ranks well but its sigmoid
output is not a frequency: on X-rays of other periods a "99 %" was wrong one time in four. We fit
Platt scaling on the validation patients: P = sigmoid(a * logit + b), two numbers stored with the
model and applied wherever a probability is shown or returned (pyfunc, web, API).

Why Platt (temperature + bias) and not temperature alone or isotonic: the balanced loss moves the
logits' zero point away from the data's prevalence, which a temperature cannot undo; isotonic
regression on a few hundred validation images is a staircase that breaks ties and overfits.
The fit is on validation images *and* on the same images under the stress shifts, so the scale does
not assume the model will only ever see X-rays like its training ones (see `fit`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    a: float = 1.0     # slope on the logit (1 / temperature)
    b: float = 0.0     # intercept

    def probability(self, logits) -> np.ndarray:
        z = self.a * np.asarray(logits, np.float64) + self.b
        return 0.5 * (1.0 + np.tanh(z / 2))  # = sigmoid(z), without overflow

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Calibration":
        return cls(**d) if d else cls()


def fit(logits, y, weights=None, l2: float = 1e-4, min_slope: float | None = None) -> Calibration:
    """Platt scaling by weighted maximum likelihood (L-BFGS on 2 parameters, numerically stable
    log-sigmoid). `l2` pulls (a, b) towards (1, 0) so that separable data keeps them finite.
    min_slope: a lower bound on a (a site's refit must never turn the network's ranking around)."""
    from scipy.optimize import minimize

    z = np.asarray(logits, np.float64)
    t = np.asarray(y, np.float64)
    w = np.ones_like(z) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()

    def nll(theta):
        a, b = theta
        s = a * z + b
        loss = np.sum(w * (np.logaddexp(0, s) - t * s)) + l2 * ((a - 1) ** 2 + b ** 2)
        p = 0.5 * (1 + np.tanh(s / 2))  # sigmoid without overflow
        grad = np.array([np.sum(w * (p - t) * z) + 2 * l2 * (a - 1), np.sum(w * (p - t)) + 2 * l2 * b])
        return loss, grad

    bounds = [(min_slope, None), (None, None)] if min_slope is not None else None
    res = minimize(nll, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=bounds)
    return Calibration(float(res.x[0]), float(res.x[1]))


def brier(y, prob) -> float:
    y, prob = np.asarray(y, np.float64), np.asarray(prob, np.float64)
    return float(np.mean((prob - y) ** 2))


def reliability(y, prob, bins: int = 10) -> list[dict]:
    """Equal-width bins of predicted probability: count, mean prediction, observed frequency."""
    y, prob = np.asarray(y, np.float64), np.asarray(prob, np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1], right=False), 0, bins - 1)
    rows = []
    for i in range(bins):
        m = which == i
        rows.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "n": int(m.sum()),
                     "mean_prob": float(prob[m].mean()) if m.any() else None,
                     "observed": float(y[m].mean()) if m.any() else None})
    return rows


def ece(y, prob, bins: int = 10) -> float:
    """Expected calibration error: the count-weighted mean |observed - predicted| over the bins."""
    n = len(y)
    return float(sum(r["n"] / n * abs(r["observed"] - r["mean_prob"])
                     for r in reliability(y, prob, bins) if r["n"])) if n else float("nan")
