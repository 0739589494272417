"""Evidence a reviewer looks at rather than reads, for one challenger against the champion, drawn
from the predictions that scoring already made (quality.score of each model): nothing is predicted
again except the Grad-CAM of the few films shown.

- galleries: the challenger's false negatives and false positives on the held-out patients and on
  the site's confirmed cases (local/), worst first (furthest from the threshold), at most MAX_TILES
  per sheet, each film with its heat map, P and an id that names no one (case_id); the sheet says
  how many errors there were in all, and says so in words when there are none;
- curves: ROC and precision-recall of both models on the same cases, one figure per scored set;
- stress: the same few held-out films under every stress shift, with the challenger's P on each.
`write` draws them all into a folder with `index.json` (what is there, with the counts).

Operating points: held-out, external and golden at the model's stored threshold; local cases at the
model's own site operating point, cross-fitted by patient (quality._score_local, which the local
figures and the policy use), or at the stored threshold when the site has too few cases for one.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.dataset import patient_id
from pipeline.evaluation import evaluate, figures, quality, shift, site
from pipeline.model.calibration import Calibration
from pipeline.settings.config import CLASSES
from pipeline.settings.params import Params

MAX_TILES = 16           # films per gallery: the worst ones; the sheet says how many there were
SHIFT_FILMS = 2          # held-out films per class on the stress sheet
SETS = {"test": "held-out", "external": "external", "golden": "golden", "local": "local (site's confirmed cases)"}
GALLERY_SETS = ("test", "local")
KINDS = {"false_negatives": "false negatives (PNEUMONIA called NORMAL)",
         "false_positives": "false positives (NORMAL called PNEUMONIA)"}


def errors(y, p, threshold) -> dict[str, np.ndarray]:
    """Indices of the false negatives and false positives of `p >= threshold` (a number, or one per
    case), worst first: furthest from the threshold on the wrong side."""
    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64)
    margin = p - np.broadcast_to(np.asarray(threshold, np.float64), p.shape)
    fn = np.flatnonzero((y == 1) & (margin < 0))
    fp = np.flatnonzero((y == 0) & (margin >= 0))
    return {"false_negatives": fn[np.argsort(margin[fn], kind="stable")],
            "false_positives": fp[np.argsort(-margin[fp], kind="stable")]}


def curve_data(y, p) -> dict | None:
    """ROC and precision-recall points with their areas (scikit-learn's roc_curve/auc,
    precision_recall_curve/average_precision_score); None when only one class is present."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    y, p = np.asarray(y).astype(int), np.asarray(p, np.float64)
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    return {"n": int(len(y)), "positives": int(y.sum()), "fpr": fpr.tolist(), "tpr": tpr.tolist(),
            "auc": float(auc(fpr, tpr)), "recall": recall.tolist(), "precision": precision.tolist(),
            "ap": float(average_precision_score(y, p))}


def case_id(sample) -> str:
    """A film's id on a tile: its file name where the data layer knows the name carries no one's name
    (Kermany's person123_virus_45, a site export's site-<salted hash>-<case>), else the start of its
    content digest: a hospital's file names may hold a patient's name, which a figure must never show."""
    return Path(sample.path).stem if patient_id(Path(sample.path).name) else f"sha256:{sample.digest[:12]}"


def operating_point(set_name: str, probs: dict, predictor, params: Params) -> tuple[np.ndarray, np.ndarray, str, bool]:
    """(P shown, threshold per case, in words, whether thresholds differ by case) of one scored set,
    as its figures were computed."""
    p = np.asarray(probs["p"], np.float64)
    stored = np.full(p.shape, predictor.threshold)
    if set_name != "local":
        return p, stored, f"stored threshold {predictor.threshold:.3f}", False
    # local: probs["p"] holds logits of the calibrated P (quality._score_local)
    if site.refusal(probs["y"], params.site):
        return (Calibration().probability(p), stored,
                f"stored threshold {predictor.threshold:.3f} (too few cases for a site fit)", False)
    prob, thr = site.cross_fitted(p, probs["y"], probs["groups"], params.site)
    return prob, thr, "site operating point, cross-fitted by patient (out-of-fold P and threshold)", True


def heat_maps(predictor, arrays: np.ndarray) -> list[np.ndarray]:
    """Grad-CAM of each film (the site's heat map: Predictor.gradcam)."""
    return [predictor.gradcam(Image.fromarray(a))[1] for a in arrays]


def galleries(out: Path, set_name: str, samples, probs: dict, predictor, version: int, params: Params,
              cache) -> list[dict]:
    """The two galleries of one set (files in `out`); their index entries."""
    p, thr, rule, per_case = operating_point(set_name, probs, predictor, params)
    entries = []
    for kind, idx in errors(probs["y"], p, thr).items():
        shown = idx[:MAX_TILES]
        arrays = evaluate.sample_arrays([samples[i] for i in shown], predictor.image_size, params, cache)[0] \
            if len(shown) else np.zeros((0, 1, 1), np.uint8)
        tiles = [figures.Tile(a, h, f"{case_id(samples[i])}\nP={p[i]:.3f}" + (f" (t={thr[i]:.3f})" if per_case else ""),
                              figures.WRONG) for i, a, h in zip(shown, arrays, heat_maps(predictor, arrays))]
        title = (f"{SETS[set_name]}: {KINDS[kind]}, challenger v{version}\n{len(idx)} among {len(p)} cases"
                 + (f", the {len(shown)} worst shown" if len(shown) < len(idx) else ", all shown, worst first")
                 + f"\n{rule}")
        file = f"gallery_{set_name}_{kind}.png"
        figures.gallery(tiles, title, out / file, empty=f"No {KINDS[kind]} among the {len(p)} cases ({rule}).")
        entries.append({"set": SETS[set_name], "kind": kind, "file": file, "errors": int(len(idx)),
                        "shown": int(len(shown)), "n": int(len(p)), "ids": [case_id(samples[i]) for i in shown],
                        "operating_point": rule})
    return entries


def curves(out: Path, set_name: str, ch: dict, cp: dict | None, versions: dict, threshold: dict) -> dict | None:
    """ROC and PR of challenger (and champion) on one set; its index entry with the areas."""
    models = {f"challenger v{versions['challenger']}": ch}
    if cp is not None:
        models[f"champion v{versions['champion']}"] = cp
    data = {label: curve_data(s["y"], s["p"]) for label, s in models.items()}
    if any(d is None for d in data.values()):
        return None
    points = None
    if set_name != "local":   # local cases are judged at per-case cross-fitted thresholds: no one point
        points = {}
        for (label, s), key in zip(models.items(), ("challenger", "champion")):
            m = evaluate.compute_metrics(s["y"], s["p"], threshold[key])
            points[label] = (1 - m["specificity"], m["sensitivity"])
    n = next(iter(data.values()))
    file = f"curves_{set_name}.png"
    figures.curves(data, f"{SETS[set_name]}: {n['n']} cases ({n['positives']} PNEUMONIA), the same for both models",
                   out / file, points)
    return {"set": SETS[set_name], "file": file, "n": n["n"], "positives": n["positives"],
            "auc": {label: round(d["auc"], 4) for label, d in data.items()},
            "ap": {label: round(d["ap"], 4) for label, d in data.items()}, "points": data}


def stress_sheet(out: Path, samples, scored: dict, predictor, version: int, params: Params, cache) -> dict:
    """The first SHIFT_FILMS films of each class of the held-out stress sample under every shift (the
    arrays the model was scored on, from the stress cache), with the challenger's P on each."""
    held = quality.stress_set(samples, params, predictor.image_size)
    p_stress = scored["probs"]["stress"]["p"]
    clean = dict(zip(scored["probs"]["test"]["keys"], scored["probs"]["test"]["p"]))
    by_digest = {s.digest: s for s in samples}
    picked = [i for label in (0, 1) for i in np.flatnonzero(held.labels == label)[:SHIFT_FILMS]]
    t = predictor.threshold

    def colour(p, label):
        return figures.RIGHT if (p >= t) == bool(label) else figures.WRONG

    films = []
    for n, i in enumerate(picked):
        key, label = held.keys[i], int(held.labels[i])
        clean_arr = evaluate.sample_arrays([by_digest[key]], predictor.image_size, params, cache)[0][0]
        films.append({"caption": f"film {chr(65 + n)}: {CLASSES[label]}\n{case_id(by_digest[key])}",
                      "clean": figures.Tile(clean_arr, None, f"P={clean[key]:.3f}", colour(clean[key], label)),
                      "shifted": {name: figures.Tile(arr[i], None, f"{name.split(':')[1]} P={p_stress[name][i]:.3f}",
                                                     colour(p_stress[name][i], label))
                                  for name, arr in held.arrays.items()}})
    families: dict[str, list] = {}
    for s in shift.stress_shifts(params.evaluate.stress_families or None):
        families.setdefault(s.family, []).append(s.value)
    rows = [(f, f"{f}\n" + "\n".join(f"{s}: {x}" for s, x in zip(("mild", "strong"), v))) for f, v in families.items()]
    file = "stress_shifts.png"
    figures.shift_sheet(films, rows, f"The same held-out films under every stress shift (mild / strong), as the "
                        f"model saw them; challenger v{version}'s P, red when wrong at {t:.3f}", out / file)
    return {"file": file, "films": len(films), "shifts": len(held.arrays), "ids": [f["caption"] for f in films]}


def write(out: Path, predictor, version: int, splits, params: Params, cache, scored: dict,
          champion: tuple[int, object, dict] | None = None) -> dict:
    """Every figure of the challenger (`predictor`, `scored` = its quality.score) into `out`, against
    `champion` = (version, predictor, scored) when there is one; writes and returns index.json."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    probs = scored["probs"]
    cp_probs = champion[2]["probs"] if champion and champion[0] != version else None
    versions = {"challenger": version, "champion": champion[0] if champion else None}
    thresholds = {"challenger": predictor.threshold, "champion": champion[1].threshold if champion else None}
    index = {"version": version, "champion": versions["champion"], "threshold": predictor.threshold,
             "galleries": [], "curves": [], "stress": None}
    for name in GALLERY_SETS:
        if name in probs:
            index["galleries"] += galleries(out, name, getattr(splits, name), probs[name], predictor, version,
                                            params, cache)
    points = {}
    for name in SETS:
        if name in probs:
            entry = curves(out, name, probs[name], cp_probs[name] if cp_probs else None, versions, thresholds)
            if entry:
                points[entry["set"]] = entry.pop("points")
                index["curves"].append(entry)
    if probs.get("stress") and probs["stress"]["p"]:
        index["stress"] = stress_sheet(out, splits.test, scored, predictor, version, params, cache)
    (out / "curves.json").write_text(json.dumps(points))
    index["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return index
