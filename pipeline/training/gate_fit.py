"""Fitting the input gate (pipeline.inference.gate) at training time: its learned limits are set on
the training X-rays and checked on the validation ones, then travel in the checkpoint under "gate".

    python -m pipeline.training.gate_fit CHECKPOINT --data DIR   fit the gate of an older model.pt
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline import timing
from pipeline.data import dataset

from pipeline.data import training_data
from pipeline.inference.gate import (LAYOUT_MARGIN, LAYOUT_MODES, LAYOUT_SHARE, ORIENTATIONS, TEXTURE_MARGIN,
                                     TEXTURE_SHARE, Gate, pca_residual, layout_thumbnails, texture_stats, transforms)
from pipeline.inference.predict import Predictor
from pipeline.settings import config


def fit_texture(x_train: np.ndarray, x_val: np.ndarray, share: float, margin: float = 1.0) -> tuple[dict, np.ndarray]:
    """The texture check: robust centre and scale (median, interquartile range) of the training films'
    statistics; its limit at validation's (1 - share) quantile of the largest |z| x TEXTURE_MARGIN x
    margin. Returns (its state, validation's scores)."""
    t_train = texture_stats(x_train)
    center = np.median(t_train, 0)
    q75, q25 = np.quantile(t_train, [0.75, 0.25], axis=0)
    scale = np.maximum(q75 - q25, 1e-3)
    s_val = (np.abs(texture_stats(x_val) - center) / scale).max(1)
    limit = float(np.quantile(s_val, 1 - share, method="higher")) * TEXTURE_MARGIN * margin
    return {"center": center.astype(np.float32).tolist(), "scale": scale.astype(np.float32).tolist(),
            "max_score": limit}, s_val


def features(predictor, arrays: np.ndarray, batch_size: int = 64, with_probs: bool = False):
    """Pooled features through the predictor's own inference path (and the probabilities)."""
    logits, feats = predictor.forward(np.ascontiguousarray(arrays), batch_size)
    return (feats, predictor.calibration.probability(logits)) if with_probs else feats


def fit_layout(x_train: np.ndarray, x_val: np.ndarray, share: float, margin: float = 1.0) -> tuple[dict, np.ndarray]:
    """The layout check: principal modes of the training films' thumbnails, its limit at validation's
    (1 - share) quantile x LAYOUT_MARGIN x margin. Returns (its state, validation's residuals)."""
    t_train = layout_thumbnails(x_train)
    t_mean = t_train.mean(0)
    basis = np.linalg.svd(t_train - t_mean, full_matrices=False)[2][:LAYOUT_MODES]
    r_val = pca_residual(layout_thumbnails(x_val), t_mean, basis)
    limit = float(np.quantile(r_val, 1 - share, method="higher")) * LAYOUT_MARGIN * margin
    return {"mean": t_mean.astype(np.float32).tolist(), "basis": basis.astype(np.float32).tolist(),
            "max_residual": limit}, r_val


def fit(predictor, x_train: np.ndarray, x_val: np.ndarray, target_false_refusal: float = 0.01,
        max_images: int = 1500, seed: int = 0, distance_margin: float = 1.0,
        val_outputs: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[dict, dict]:
    """Fit the gate on training X-rays only; thresholds on validation X-rays so that the three
    learned checks together refuse at most `target_false_refusal` of them (LAYOUT_SHARE of it for
    the layout, TEXTURE_SHARE for the texture, half the rest each for the feature distance and the
    orientation).

    val_outputs: (raw logits, features) of x_val through this predictor when the caller has them.
    Returns (state for the checkpoint, metrics for MLflow)."""
    from sklearn.covariance import LedoitWolf
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    if len(x_train) > max_images:
        x_train = x_train[np.sort(rng.choice(len(x_train), max_images, replace=False))]
    with timing.step("training features"):
        f_train = features(predictor, x_train)
    if val_outputs is not None:
        f_val, p_val = val_outputs[1], predictor.calibration.probability(val_outputs[0])
    else:
        f_val, p_val = features(predictor, x_val, with_probs=True)
    lw = LedoitWolf().fit(f_train)
    mean, precision = lw.location_.astype(np.float32), lw.precision_.astype(np.float32)

    # orientation: every training film in the six orientations
    n_orient = min(len(x_train), max(200, max_images // 3))
    idx = np.sort(rng.choice(len(x_train), n_orient, replace=False))
    with timing.step("orientation"):
        views = transforms(x_train[idx])
        f_orient = np.concatenate([f_train[idx]] + [features(predictor, v) for v in views[1:]])
        y_orient = np.repeat(np.arange(len(ORIENTATIONS)), n_orient)
        mu, sd = f_orient.mean(0), f_orient.std(0) + 1e-6
        clf = LogisticRegression(C=0.1, max_iter=2000).fit((f_orient - mu) / sd, y_orient)

    state = {"mean": mean.tolist(), "precision": precision.tolist(), "max_distance": 0.0,
             "orient_coef": clf.coef_.astype(np.float32).tolist(),
             "orient_intercept": clf.intercept_.astype(np.float32).tolist(),
             "orient_mean": mu.astype(np.float32).tolist(), "orient_std": sd.astype(np.float32).tolist(),
             "min_upright": 0.0}
    with timing.step("layout and texture"):
        state["layout"], r_val = fit_layout(x_train, x_val, target_false_refusal * LAYOUT_SHARE, distance_margin)
        state["texture"], t_val = fit_texture(x_train, x_val, target_false_refusal * TEXTURE_SHARE, distance_margin)
    gate = Gate(state)
    half = target_false_refusal * (1 - LAYOUT_SHARE - TEXTURE_SHARE) / 2
    d_val = gate.distance(f_val)
    p_up = gate.orientation(f_val)[:, 0]
    # "higher"/"lower": the threshold is an observed value, so at most `half` of validation is refused;
    # the 0.1 % margin absorbs float differences between batched (here) and single-image (serving) passes
    # distance_margin > 1 widens the limit when the validation set is too small to resolve the tail
    # (a 30-image quantile at 99.5 % is its maximum); production keeps 1.0
    state["max_distance"] = float(np.quantile(d_val, 1 - half, method="higher")) * 1.001 * distance_margin
    state["min_upright"] = float(min(0.5, np.quantile(p_up, half, method="lower"))) * 0.999
    # reference of the score distribution, for drift monitoring (pipeline.evaluation.drift)
    state["reference"] = {"distance_quantiles": np.quantile(d_val, np.linspace(0, 1, 11)).tolist(),
                          "positive_rate": float((p_val >= predictor.threshold).mean()),
                          "n_val": int(len(x_val))}
    gate = Gate(state)
    val_views = transforms(x_val)
    # assess()'s rules (a layout refusal comes first, so the orientation rule only sees the rest)
    refused = ((d_val > gate.max_distance) | gate.misoriented(x_val, gate.orientation(f_val)) | (r_val > gate.max_layout)
               | (t_val > gate.max_texture))
    metrics = {"gate_max_distance": state["max_distance"], "gate_min_upright": state["min_upright"],
               "gate_max_layout_residual": gate.max_layout, "gate_max_texture_score": gate.max_texture,
               "gate_val_layout_refusal_rate": float((r_val > gate.max_layout).mean()),
               "gate_val_texture_refusal_rate": float((t_val > gate.max_texture).mean()),
               "gate_val_false_refusal_rate": float(refused.mean()),
               "gate_fit_images": float(len(x_train))}
    for k, view in enumerate(val_views[1:], start=1):
        name = ["rot90", "rot180", "rot270", "vflip", "inverted"][k - 1]
        with timing.step("turned validation films"):
            caught = (gate.layout_residual(view) > gate.max_layout) | (gate.texture_score(view) > gate.max_texture) \
                | gate.misoriented(view, gate.orientation(features(predictor, view)))
        metrics[f"gate_val_caught_{name}"] = float(caught.mean())
    return state, metrics


def refit(checkpoint, data_root, out=None) -> dict:
    """Fit the gate of an existing checkpoint (trained before the gate existed) on its own training
    split, re-made exactly as training made it; writes the checkpoint with "gate" to `out`."""

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    params = config.checkpoint_params(ckpt["params"])  # its split re-made; the gate's settings are today's
    splits, _, cache = training_data.load(data_root, params)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    gp = params.gate
    ckpt["gate"], metrics = fit(predictor, dataset.arrays(splits.train, cache)[0], dataset.arrays(splits.val, cache)[0],
                                gp.target_false_refusal, gp.max_fit_images, params.data.seed, gp.distance_margin)
    torch.save(ckpt, out or checkpoint)
    return metrics



if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="fit the input gate of an existing model.pt")
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the dataset it was trained on")
    parser.add_argument("--out", help="write here (default: in place)")
    args = parser.parse_args()
    print(json.dumps(refit(args.checkpoint, args.data, args.out), indent=1))
