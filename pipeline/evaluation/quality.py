"""A model's quality as doctors will live with it: fitted on validation, scored on held-out patients,
on the same patients under acquisition shifts (stress) and on an external set when one is provided.

- `fit_operating_point` (training): Platt calibration and the threshold, from the validation
  patients and the same patients under every stress shift (params `evaluate`).
- `score` (training, evaluation, promotion): held-out, stress and external figures at the model's own
  threshold, with the per-image probabilities kept for paired comparisons of two models.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import timing
from pipeline.model import calibration
from pipeline.evaluation import evaluate, site, stress
from pipeline.settings.params import Params
from pipeline.data import dataset


def _stress_set(samples, params: Params, image_size: int, salt: int):
    ep = params.evaluate
    seed = params.data.seed + salt
    picked = stress.pick(samples, ep.stress_images, seed)
    return stress.build(picked, image_size, seed=seed, families=ep.stress_families,
                        source_max_side=ep.stress_source_max_side)


def stress_set(samples, params: Params, image_size: int):
    """The held-out patients under every shift: what `score` and the fast-path check see."""
    return _stress_set(samples, params, image_size, salt=2)


def fit_operating_point(predictor, splits, params: Params, cache) -> tuple[dict, Outputs]:
    """Set predictor.calibration and predictor.threshold from the validation patients; returns
    what was fitted (for the run's log) and the validation images' outputs (the gate's fit uses them)."""
    ep = params.evaluate
    bs = ep.batch_size
    x_val, y_val = dataset.arrays(splits.val, cache)
    with timing.step("validation"):
        z_val, f_val = predictor.forward(x_val, bs)
    val_stress = _stress_set(splits.val, params, predictor.image_size, salt=1)
    with timing.step("stress"):
        z_stress = stress.logits(predictor, val_stress, bs)
    if ep.calibration == "stress":
        # clean validation and its shifted copies weigh half each: the scale must hold under shift
        # without forgetting the in-distribution case
        z = np.concatenate([z_val, *z_stress.values()])
        y = np.concatenate([y_val, *[val_stress.labels] * len(z_stress)])
        w = np.concatenate([np.full(len(z_val), 0.5 / len(z_val)),
                            np.full(len(z) - len(z_val), 0.5 / max(1, len(z) - len(z_val)))])
        predictor.calibration = calibration.fit(z, y, w)
    else:  # clean
        predictor.calibration = calibration.fit(z_val, y_val)
    p_val = predictor.calibration.probability(z_val)
    p_stress = {k: predictor.calibration.probability(v) for k, v in z_stress.items()}
    # the threshold rule needs the same images clean and shifted: use the stress sample's clean scores
    idx = {d: i for i, d in enumerate(s.digest for s in splits.val)}
    p_val_sub = p_val[[idx[k] for k in val_stress.keys]]
    target = ep.target_sensitivity
    rule = ep.threshold_rule
    predictor.threshold = evaluate.robust_threshold(y_val, p_val, val_stress.labels, p_stress, target, rule)
    fitted = {"calibration": predictor.calibration.to_dict(), "threshold": predictor.threshold, "rule": rule,
              "clean_threshold": evaluate.choose_threshold(y_val, p_val, target),
              "tradeoff": evaluate.threshold_tradeoff(val_stress.labels, p_val_sub, p_stress),
              "val_ece_before": calibration.ece(y_val, 1 / (1 + np.exp(-z_val))),
              "val_ece_after": calibration.ece(y_val, p_val)}
    return fitted, Outputs([s.digest for s in splits.val], y_val, z_val, f_val)


OUTPUTS_FILE = "outputs.npz"   # in the training run's reports/


@dataclass
class Outputs:
    """A model's raw float32 outputs on one set of images: what its figures, the paired comparisons
    and the fast-path check's reference all start from, computed once per model and set (training
    keeps the challenger's in `outputs.npz`, which evaluation reuses: `score(known=...)`)."""
    keys: list[str]          # image identity (content digest), in the set's order
    y: np.ndarray            # labels [N]
    z: np.ndarray            # raw logits [N] (before calibration)
    features: np.ndarray     # pooled features [N, D] (the input gate's)


def _outputs(predictor, name: str, keys: list[str], images_and_labels, batch_size: int,
             known: dict[str, Outputs]) -> Outputs:
    """The known outputs of `name` when they are of these very images, else a forward pass."""
    got = known.get(name)
    if got is not None and got.keys == keys:
        return got
    images, y = images_and_labels()
    z, features = predictor.forward(images, batch_size)
    return Outputs(keys, np.asarray(y), z, features)


def _score_set(predictor, out: Outputs) -> tuple[dict, dict]:
    """(figures, probabilities) of one set at the predictor's stored threshold: AUC, sensitivity,
    specificity, ..., confusion matrix, ECE, Brier. The one scoring of held-out, external and golden images."""
    p = predictor.calibration.probability(out.z)
    figures = evaluate.compute_metrics(out.y, p, predictor.threshold)
    figures.update(ece=calibration.ece(out.y, p), brier=calibration.brier(out.y, p))
    return figures, {"keys": out.keys, "y": out.y, "p": p}


def score(predictor, splits, params: Params, cache, known: dict[str, Outputs] | None = None) -> dict:
    """Held-out, stress, external and golden figures of `predictor` at its stored threshold, plus
    the per-image probabilities ("probs") that a paired comparison of two models needs and the raw
    outputs ("outputs": set name -> Outputs; stress shifts as "stress:<shift>").

    known: outputs this very model already produced (training's `outputs.npz`); a set whose images
    are the same (same digests, same order) is not run again."""
    bs, known = params.evaluate.batch_size, known or {}
    outputs: dict[str, Outputs] = {}

    def run(name: str, samples) -> Outputs:
        with timing.step(name.split(":")[0]):
            outputs[name] = _outputs(predictor, name, [s.digest for s in samples],
                                     lambda: evaluate.sample_arrays(samples, predictor.image_size, params, cache),
                                     bs, known)
        return outputs[name]

    test, probs_test = _score_set(predictor, run("test", splits.test))
    held_stress = stress_set(splits.test, params, predictor.image_size)
    for shift_name, arrays in held_stress.arrays.items():
        with timing.step("stress"):
            outputs[f"stress:{shift_name}"] = _outputs(predictor, f"stress:{shift_name}", held_stress.keys,
                                                       lambda: (arrays, held_stress.labels), bs, known)
    p_stress = {k: predictor.calibration.probability(outputs[f"stress:{k}"].z) for k in held_stress.arrays}
    out = {"test": test, "stress": stress.report(held_stress.labels, p_stress, predictor.threshold),
           "external": None, "golden": None, "outputs": outputs,
           "probs": {"test": probs_test,
                     "stress": {"keys": held_stress.keys, "y": held_stress.labels, "p": p_stress}}}
    for name in ("external", "golden"):   # a provided test/ folder; the fixed golden set (pipeline.data.golden)
        samples = getattr(splits, name, None) or []
        if samples:
            out[name], out["probs"][name] = _score_set(predictor, run(name, samples))
    if getattr(splits, "local", None):
        out["local"], out["probs"]["local"] = _score_local(predictor, run("local", splits.local), splits.local,
                                                           params)
    return out


def _score_local(predictor, outputs: Outputs, samples, params: Params) -> tuple[dict, dict]:
    """The site's confirmed cases, each model at ITS OWN site operating point: calibration and
    threshold cross-fitted by patient on these cases (pipeline.evaluation.site), so a new version is
    never judged at the old one's threshold, and no case judges a fit it took part in."""
    y, p = outputs.y, predictor.calibration.probability(outputs.z)
    q = np.clip(np.asarray(p, np.float64), 1e-12, 1 - 1e-12)
    z = np.log(q / (1 - q))    # Platt is affine in the logit: refitting on these equals refitting on the raw ones
    groups = [s.patient for s in samples]
    figures = {"n": len(y), "positives": int(np.sum(y)), "negatives": int(len(y) - np.sum(y))}
    if site.refusal(y, params.site):
        figures["note"] = "too few cases for a site operating point: " + site.refusal(y, params.site)
        return figures, {"keys": outputs.keys, "y": y, "p": z, "groups": groups}
    prob, thr = site.cross_fitted(z, y, groups, params.site)
    a = site.answers(y, prob, thr)
    figures.update(auc=float(evaluate.roc_auc(y, z)), sensitivity=a.sensitivity, specificity=a.specificity, ece=a.ece,
                   sensitivity_ci=list(a.sensitivity_ci), specificity_ci=list(a.specificity_ci))
    return figures, {"keys": outputs.keys, "y": y, "p": z, "groups": groups}


def save_outputs(path: Path, outputs: dict[str, Outputs]) -> Path:
    """The raw outputs as one .npz (keys, labels, logits, features per set)."""
    arrays = {}
    for name, o in outputs.items():
        arrays.update({f"{name}|keys": np.array(o.keys, dtype=str), f"{name}|y": o.y, f"{name}|z": o.z,
                       f"{name}|features": o.features})
    np.savez_compressed(path, **arrays)
    return Path(path)


def load_outputs(path: Path) -> dict[str, Outputs]:
    with np.load(path, allow_pickle=False) as f:
        names = dict.fromkeys(k.rsplit("|", 1)[0] for k in f.files)
        return {n: Outputs([str(k) for k in f[f"{n}|keys"]], f[f"{n}|y"], f[f"{n}|z"], f[f"{n}|features"])
                for n in names}


def flat_metrics(scored: dict) -> dict:
    """The figures as one dict: held-out keys at the top (auc, sensitivity, ...), then
    stress_* and external_* (what metrics.json, `dvc metrics` and MLflow get)."""
    m = dict(scored["test"])
    st = scored["stress"]
    m.update({f"stress_{k}": v for k, v in st.items() if k != "per_shift" and not k.endswith("_shift")})
    m["stress_worst_shift"] = {k: st[f"worst_{k}_shift"] for k in ("auc", "sensitivity", "specificity")}
    m["stress_per_shift"] = st["per_shift"]
    if scored.get("external"):
        m.update({f"external_{k}": v for k, v in scored["external"].items() if k != "confusion_matrix"})
    if scored.get("local"):    # local_auc, local_sensitivity, ... at the model's own site operating point
        m.update({f"local_{k}": v for k, v in scored["local"].items() if not k.endswith("_ci") and k != "note"})
    if scored.get("golden"):   # golden_auc, golden_sensitivity, ..., golden_ece, golden_n and its counts
        g = scored["golden"]
        m.update({f"golden_{k}": v for k, v in g.items() if k != "confusion_matrix"})
        (tn, fp), (fn, tp) = g["confusion_matrix"]
        m.update(golden_tn=tn, golden_fp=fp, golden_fn=fn, golden_tp=tp)
    return m


def fit_and_score(predictor, splits, params: Params, cache, out_dir: Path) -> dict:
    """Training's last step: fit the operating point, score, write reports and plots into out_dir."""
    with timing.step("operating point"):
        fitted, val_outputs = fit_operating_point(predictor, splits, params, cache)
    with timing.step("held-out scores"):
        scored = score(predictor, splits, params, cache)
    metrics = flat_metrics(scored)
    metrics.update(val_ece_uncalibrated=fitted["val_ece_before"], val_ece=fitted["val_ece_after"],
                   clean_threshold=fitted["clean_threshold"])
    out_dir = Path(out_dir)
    (out_dir / "operating_point.json").write_text(json.dumps(fitted, indent=1))
    save_outputs(out_dir / OUTPUTS_FILE, scored["outputs"])   # the evaluation reuses them (score(known=...))
    plots = save_quality_plots(scored, fitted, out_dir / "plots")
    return {"metrics": metrics, "scored": scored, "fitted": fitted, "plots": plots, "val_outputs": val_outputs,
            "y_test": scored["probs"]["test"]["y"], "p_test": scored["probs"]["test"]["p"]}


def save_quality_plots(scored: dict, fitted: dict, out_dir: Path) -> list[Path]:
    """Reliability diagram (held-out and pooled stress), per-shift bars, threshold trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    probs = scored["probs"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    sets = {"held-out": (probs["test"]["y"], probs["test"]["p"]),
            "stress (pooled)": (np.concatenate([probs["stress"]["y"]] * len(probs["stress"]["p"])),
                                np.concatenate(list(probs["stress"]["p"].values())))}
    for name in ("external", "golden"):
        if name in probs:
            sets[name] = (probs[name]["y"], probs[name]["p"])
    for label, (y, p) in sets.items():
        rows = [r for r in calibration.reliability(y, p) if r["n"]]
        ax.plot([r["mean_prob"] for r in rows], [r["observed"] for r in rows], "o-",
                label=f"{label} (ECE {calibration.ece(y, p):.3f})")
    ax.set(xlabel="predicted P(pneumonia)", ylabel="observed frequency", title="Reliability (calibrated)")
    ax.legend(loc="upper left")
    paths.append(evaluate.save_figure(fig, out_dir / "reliability.png"))

    per = scored["stress"]["per_shift"]
    fig, ax = plt.subplots(figsize=(10, 4))
    names = list(per)
    xs = np.arange(len(names))
    for i, key in enumerate(("auc", "sensitivity", "specificity")):
        ax.bar(xs + (i - 1) * 0.27, [per[n][key] for n in names], 0.27, label=key)
    ax.set_xticks(xs, names, rotation=60, ha="right", fontsize=7)
    ax.set(ylim=(0.5, 1.0), title="Held-out patients under acquisition shifts (stored threshold)")
    ax.legend(loc="lower left")
    paths.append(evaluate.save_figure(fig, out_dir / "stress.png"))

    t = fitted["tradeoff"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t["threshold"], t["sensitivity"], label="sensitivity, clean validation")
    ax.plot(t["threshold"], t["specificity"], label="specificity, clean validation")
    ax.plot(t["threshold"], t["stress_sensitivity"], "--", label="sensitivity, validation under shifts")
    ax.plot(t["threshold"], t["stress_specificity"], "--", label="specificity, validation under shifts")
    ax.axvline(fitted["threshold"], color="red", lw=0.8, label=f"stored ({fitted['rule']}) {fitted['threshold']:.3f}")
    ax.set(xlabel="threshold on calibrated P(pneumonia)", ylim=(0.5, 1.01), title="Threshold trade-off")
    ax.legend(fontsize=7, loc="lower left")
    paths.append(evaluate.save_figure(fig, out_dir / "threshold_tradeoff.png"))
    return paths

