"""Clinical metrics, the decision-threshold rule, and the plots a reviewer reads.

Threshold rule: on the validation patients, the highest threshold whose sensitivity (recall of
PNEUMONIA) reaches evaluate.target_sensitivity. Missing pneumonia costs more than a second look
at a normal film, so sensitivity is fixed first and specificity is the best available under it.
`evaluate.threshold_rule` says on which validation images the target must hold:
- clean:  the validation images as they are (in distribution only);
- pooled: the target holds on the clean validation images *and* on their copies under every stress
          shift taken together (the lower of the two thresholds): in distribution, and on average over
          acquisition changes (the default). Pooling clean and shifted images in one set would not do:
          shifts that raise the positives' scores would then lift the threshold above the clean one;
- worst:  the target holds on the clean images and under each shift separately (lowest threshold:
          most sensitive, least specific).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pipeline.settings.params import Params
from pipeline.data import dataset
from pipeline.settings import config


def choose_threshold(y_true, prob, target_sensitivity: float) -> float:
    """Highest t such that predicting PNEUMONIA for prob >= t gives sensitivity >= target."""
    y_true, prob = np.asarray(y_true), np.asarray(prob, dtype=np.float64)
    positives = np.sort(prob[y_true == 1])[::-1]
    if positives.size == 0:
        return 0.5
    k = max(1, math.ceil(target_sensitivity * positives.size - 1e-9))
    return float(positives[k - 1])


THRESHOLD_RULES = ("clean", "pooled", "worst")


def robust_threshold(y_val, p_val, y_stress, stressed: dict[str, np.ndarray], target_sensitivity: float,
                     rule: str = "pooled") -> float:
    """The stored threshold by `rule` (module docstring): (y_val, p_val) are the clean validation
    images, `stressed` maps shift -> probabilities of a sample of them (labels y_stress) under it."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"evaluate.threshold_rule={rule!r}: expected one of {', '.join(THRESHOLD_RULES)}")
    clean = choose_threshold(y_val, p_val, target_sensitivity)
    if rule == "clean" or not stressed:
        return clean
    if rule == "worst":
        return min([clean] + [choose_threshold(y_stress, p, target_sensitivity) for p in stressed.values()])
    y_all = np.concatenate([np.asarray(y_stress)] * len(stressed))
    return min(clean, choose_threshold(y_all, np.concatenate(list(stressed.values())), target_sensitivity))


def threshold_tradeoff(y, p_clean, stressed: dict[str, np.ndarray], points: int = 101) -> dict:
    """Sensitivity and specificity against the threshold, clean and pooled over the shifts (the curve
    the threshold rule walks along; plotted for reviewers)."""
    y = np.asarray(y)
    ts = np.linspace(0, 1, points)
    y_all = np.concatenate([y] * max(1, len(stressed)))
    p_all = np.concatenate(list(stressed.values())) if stressed else p_clean

    def rates(yy, pp):
        pos, neg = pp[yy == 1], pp[yy == 0]
        return ([float((pos >= t).mean()) if pos.size else 0.0 for t in ts],
                [float((neg < t).mean()) if neg.size else 0.0 for t in ts])

    sens, spec = rates(y, np.asarray(p_clean))
    s_sens, s_spec = rates(y_all, p_all)
    return {"threshold": ts.tolist(), "sensitivity": sens, "specificity": spec,
            "stress_sensitivity": s_sens, "stress_specificity": s_spec}


def roc_auc(y_true, prob) -> float:
    """Area under the ROC curve, as the Mann-Whitney statistic with tied scores counted half (what
    scikit-learn's roc_auc_score computes, without it: the torch-free web tier has no scikit-learn);
    NaN when only one class is present."""
    from scipy.stats import rankdata

    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return float("nan")
    positive = y_true == np.max(y_true)
    ranks = rankdata(np.asarray(prob, dtype=np.float64))
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def compute_metrics(y_true, prob, threshold: float) -> dict:
    y_true, prob = np.asarray(y_true), np.asarray(prob, dtype=np.float64)
    pred = (prob >= threshold).astype(int)
    tp = int(((pred == 1) & (y_true == 1)).sum())
    tn = int(((pred == 0) & (y_true == 0)).sum())
    fp = int(((pred == 1) & (y_true == 0)).sum())
    fn = int(((pred == 0) & (y_true == 1)).sum())

    def ratio(a, b):
        return a / b if b else 0.0

    precision, sensitivity = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "auc": roc_auc(y_true, prob),
        "accuracy": ratio(tp + tn, len(y_true)),
        "sensitivity": sensitivity,
        "specificity": ratio(tn, tn + fp),
        "precision": precision,
        "f1": ratio(2 * precision * sensitivity, precision + sensitivity),
        "threshold": float(threshold),
        "n": int(len(y_true)),
        # rows: true NORMAL, PNEUMONIA; columns: predicted NORMAL, PNEUMONIA
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def evaluate_predictor(predictor, samples, params: Params, cache=None) -> dict:
    """Metrics of `predictor` on validated samples, at the predictor's own stored threshold.

    Images come from the preprocessing cache at the predictor's input size.
    """
    y_true, prob = predict_samples(predictor, samples, params, cache)
    return compute_metrics(y_true, prob, predictor.threshold)


def predict_samples(predictor, samples, params: Params, cache=None):
    """(labels, P(pneumonia)) of samples, read through the cache at the predictor's size."""
    images, labels = sample_arrays(samples, predictor.image_size, params, cache)
    return labels, predictor.probabilities(images, batch_size=params.evaluate.batch_size)


def sample_arrays(samples, image_size: int, params: Params, cache=None):
    """(uint8 [N, S, S] images, labels [N]) of validated samples, from the cache at `image_size`."""
    if cache is not None and cache.image_size == image_size:
        return dataset.arrays(samples, cache)
    cache = dataset.open_cache(config.apply_overrides(params, {"preprocess.image_size": image_size}))
    digests, index = cache.lookup(s.path for s in samples)
    rows = [index[d] for d in digests]
    if any(isinstance(r, str) for r in rows):
        raise ValueError("evaluation samples must be validated images")
    return cache.arrays(rows), np.array([s.label for s in samples], np.int64)


def save_metrics(metrics: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(metrics, indent=2))


def save_plots(y_true, prob, threshold: float, history: list[dict], out_dir: str | Path) -> list[Path]:
    """ROC, precision-recall, confusion matrix and training curves as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y_true, prob = np.asarray(y_true), np.asarray(prob)
    m = compute_metrics(y_true, prob, threshold)
    paths = []

    fig, ax = plt.subplots(figsize=(5, 5))
    fpr, tpr, _ = roc_curve(y_true, prob)
    ax.plot(fpr, tpr, label=f"AUC {m['auc']:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.scatter([1 - m["specificity"]], [m["sensitivity"]], color="red", zorder=3,
               label=f"threshold {threshold:.3f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (held-out)")
    ax.legend(loc="lower right")
    paths.append(save_figure(fig, out / "roc.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    precision, recall, _ = precision_recall_curve(y_true, prob)
    ax.plot(recall, precision)
    ax.scatter([m["sensitivity"]], [m["precision"]], color="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall (held-out)")
    ax.legend(loc="lower left")
    paths.append(save_figure(fig, out / "precision_recall.png"))
    # the same curves as data, so that `dvc plots diff` overlays two versions' curves
    (out.parent / "roc.json").write_text(json.dumps(
        [{"fpr": float(a), "tpr": float(b)} for a, b in zip(fpr, tpr)]))
    (out.parent / "precision_recall.json").write_text(json.dumps(
        [{"recall": float(a), "precision": float(b)} for a, b in zip(recall, precision)]))

    fig, ax = plt.subplots(figsize=(4.5, 4))
    cm = np.array(m["confusion_matrix"])
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["NORMAL", "PNEUMONIA"],
           yticklabels=["NORMAL", "PNEUMONIA"], xlabel="predicted", ylabel="true",
           title=f"Confusion matrix @ {threshold:.3f}")
    paths.append(save_figure(fig, out / "confusion_matrix.png"))

    if history:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
        epochs = [h["epoch"] for h in history]
        ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
        ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
        ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
        ax1.legend()
        ax2.plot(epochs, [h["val_auc"] for h in history], color="green")
        ax2.set(xlabel="epoch", ylabel="AUC", title="Validation AUC")
        paths.append(save_figure(fig, out / "training_curves.png"))
    return paths


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG and free it (every plot of the pipeline goes through here)."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
