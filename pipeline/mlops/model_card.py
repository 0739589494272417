"""The model card: what a registered version is, for whom, how good, and where it fails.

Written as the MLflow model-version description (Markdown) when the version is registered and
completed with the promotion decision; the web app shows it to staff from the result page.
"""
from __future__ import annotations

from pipeline.settings.params import Params


def _pct(v) -> str:
    return f"{100 * v:.1f} %" if isinstance(v, (int, float)) else "n/a"


def _num(v, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "n/a"


def render(version: int | str, metrics: dict, params: Params, data_version: str, counts: dict,
           decision: dict | None = None) -> str:
    """Markdown card from the run's flat metrics (quality.flat_metrics) and params."""
    ep, tp = params.evaluate, params.train
    worst = metrics.get("stress_worst_shift") or {}
    n = counts or {}
    lines = [
        f"## Chest X-ray pneumonia classifier, version {version}",
        "",
        f"**Model.** ResNet18 trained from scratch on one grey channel at {params.preprocess.image_size} px, "
        f"intensity `{params.preprocess.intensity}`, EMA of the weights "
        f"({tp.ema_decay}), acquisition augmentation; Platt-calibrated probability.",
        f"**Data.** Version `{data_version}`: paediatric anterior-posterior chest X-rays (age 1-5) from one "
        f"hospital (Guangzhou Women and Children's Medical Center, Kermany et al. 2018). Patients: "
        f"train {sum((n.get('train') or {}).values())}, validation {sum((n.get('val') or {}).values())}, "
        f"held-out {sum((n.get('test') or {}).values())} images, split by patient.",
        "**Intended use.** A second reader that flags possible pneumonia on frontal chest X-rays of children, "
        "for a clinician who reads the film. Not a diagnosis; not for adults, lateral views, CT or other body parts.",
        "",
        "| figure | held-out | worst shift | mean over shifts |" + (" external |" if "external_auc" in metrics else ""),
        "|---|---|---|---|" + ("---|" if "external_auc" in metrics else ""),
    ]
    ext = "external_auc" in metrics
    for key, label in (("auc", "AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity")):
        row = f"| {label} | {_num(metrics.get(key))} | {_num(metrics.get(f'stress_worst_{key}'))} " \
              f"({worst.get(key, '')}) | " + (_num(metrics.get("stress_mean_auc")) if key == "auc" else
                                                (_num(metrics.get(f"stress_pooled_{key}")) + " pooled")) + " |"
        lines.append(row + (f" {_num(metrics.get(f'external_{key}'))} |" if ext else ""))
    lines.append(f"| ECE (10 bins) | {_num(metrics.get('ece'))} | | {_num(metrics.get('stress_mean_ece'))} |"
                 + (f" {_num(metrics.get('external_ece'))} |" if ext else ""))
    if "golden_auc" in metrics:
        lines += ["", f"**Golden set** (fixed, {metrics.get('golden_n')} images, patients never in any data "
                      f"version): AUC {_num(metrics.get('golden_auc'))}, sensitivity {_num(metrics.get('golden_sensitivity'))}, "
                      f"specificity {_num(metrics.get('golden_specificity'))}, ECE {_num(metrics.get('golden_ece'))}."]
    lines += [
        "",
        f"**Threshold.** PNEUMONIA when P >= {_num(metrics.get('threshold'), 3)}: the highest threshold whose "
        f"sensitivity reaches {ep.target_sensitivity} on the validation patients, rule `{ep.threshold_rule}` "
        f"(pooled: also under {metrics.get('stress_shifts', 'the')} acquisition shifts; the clean-only rule would "
        f"give {_num(metrics.get('clean_threshold'), 3)}).",
        f"**Calibration.** Platt scaling fitted on `{ep.calibration}` validation images; validation ECE "
        f"{_num(metrics.get('val_ece_uncalibrated'))} before, {_num(metrics.get('val_ece'))} after.",
        "**Known limits.** One hospital, one population: expect lower specificity on films of other machines or "
        "periods (the stress figures are the platform's estimate, the external column a measurement when "
        "present). Trained without ImageNet weights. Refuses nothing by itself beyond unreadable files: "
        "the input gate decides what is a chest X-ray.",
    ]
    if decision:
        lines += ["", f"**Promotion decision.** {'promoted' if decision.get('promote') else 'not promoted'}: "
                      f"{decision.get('reason', '')}"]
    return "\n".join(lines)


EVIDENCE_HEADING = "**Evidence for review.**"


def evidence_section(index: dict, link: str) -> str:
    """The card's pointer to the figures of pipeline.evaluation.evidence (index: its index.json;
    link: the run's evidence/ folder in the MLflow UI), with the counts a reviewer checks first."""
    against = f"against champion v{index['champion']}" if index.get("champion") not in (None, index["version"]) \
        else "alone (no other champion)"
    lines = [f"{EVIDENCE_HEADING} Figures of version {index['version']} {against}, on the same cases, in the "
             f"training run's artifacts [evidence/]({link}) ([index.json]({link}/index.json)):"]
    sets: dict[str, list[str]] = {}
    for g in index.get("galleries", []):
        words = g["kind"].replace("_", " ")
        words = words[:-1] if g["errors"] == 1 else words    # "1 false negative"
        sets.setdefault(g["set"], []).append(f"[{g['errors']} {words}]({link}/{g['file']})")
    for name, parts in sets.items():
        n = next(g["n"] for g in index["galleries"] if g["set"] == name)
        lines.append(f"- Grad-CAM of the errors, {name} ({n} cases): {', '.join(parts)}")
    for c in index.get("curves", []):
        aucs = ", ".join(f"{label} {auc:.3f}" for label, auc in c["auc"].items())
        lines.append(f"- [ROC and precision-recall, {c['set']}]({link}/{c['file']}): AUC {aucs}")
    if index.get("stress"):
        s = index["stress"]
        lines.append(f"- [{s['films']} held-out films under each of the {s['shifts']} stress shifts]"
                     f"({link}/{s['file']})")
    return "\n".join(lines)


def with_evidence(card: str, section: str) -> str:
    """`card` with its evidence section replaced by `section` (or added before any later part, such as
    the promotion decision, which stays last)."""
    head, found, rest = card.partition(EVIDENCE_HEADING)
    tail = ""
    if found:
        _, sep, after = rest.partition("\n\n**")   # the next paragraph that opens with a bold heading
        tail = f"\n\n**{after}" if sep else ""
    return f"{head.rstrip()}\n\n{section}{tail}".lstrip()
