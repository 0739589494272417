"""The promotion policy: a pure function of the two models' scores and params.yaml `promotion`.

No MLflow, no I/O: `decide` reads what pipeline.mlops.candidates.evaluate_candidates measured and says
promote or not, with the reason in words (it is what reviewers and doctors' IT read later).
"""
from __future__ import annotations

from pipeline.settings.params import Params
from pipeline.mlops.server import finite, fmt, jsonable, now


def _floor_failures(metrics: dict, floors: dict, prefix: str = "", label: str = "") -> list[str]:
    failed = []
    for key, floor in (floors or {}).items():
        value = metrics.get(prefix + key)
        name = f"{label}{key}"
        if not finite(value):
            failed.append(f"{name} unavailable (floor {floor})")
        elif value < float(floor):
            failed.append(f"{name} {value:.4f} < floor {float(floor):.4f}")
    return failed


def _all_floor_failures(metrics: dict, policy: dict, site_floors: dict) -> list[str]:
    """Held-out floors, worst-shift floors, and external / golden / local floors when such a set was scored."""
    failed = _floor_failures(metrics, policy.floors)
    failed += _floor_failures(metrics, policy.stress_floors, "stress_worst_", "worst-shift ")
    if "external_auc" in metrics:
        failed += _floor_failures(metrics, policy.external_floors, "external_", "external ")
    if "golden_n" in metrics:
        failed += _floor_failures(metrics, policy.golden_floors, "golden_", "golden-set ")
    if "local_auc" in metrics:   # out of fold, at the model's own site operating point
        failed += _floor_failures(metrics, site_floors, "local_", "local ")
    return failed


COMPARISON_LABELS = {"test": "held-out", "stress": "under shift (mean AUC)", "external": "external",
                     "golden": "golden set", "local": "on the site's confirmed cases"}


def _golden_note(ch_m: dict, champ_m: dict | None, comparison: dict | None) -> str:
    """The golden-set figures in words, for every reason (empty when no golden set was scored)."""
    if "golden_n" not in ch_m:
        return ""

    def figures(m: dict) -> str:
        return (f"AUC {fmt(m.get('golden_auc'))}, sensitivity {fmt(m.get('golden_sensitivity'))}, "
                f"specificity {fmt(m.get('golden_specificity'))}, ECE {fmt(m.get('golden_ece'))}")

    note = f" [golden set, {int(ch_m['golden_n'])} images: challenger {figures(ch_m)}"
    if champ_m and "golden_n" in champ_m:
        note += f"; champion {figures(champ_m)}"
        c = (comparison or {}).get("golden")
        if c:
            note += f"; AUC difference {c['delta']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
    return note + "]"


def decide(scores: dict, params: Params) -> dict:
    """Apply the params.yaml `promotion` policy to evaluate_candidates()'s scores.

    1. the challenger must pass every floor: held-out, worst stress shift, external and golden set (if any);
    2. no champion: promote when first_champion == "promote_if_floors" (else leave it to a person);
    3. a champion that is itself under a floor on today's data is replaced by a challenger passing them;
    4. otherwise, paired on the same images (held-out, stress, external): reject when the challenger
       is significantly worse anywhere (the interval of AUC(challenger) - AUC(champion) lies below 0)
       or not shown non-inferior (its lower bound under -non_inferiority_margin); promote when it is
       non-inferior everywhere and its mean AUC under shift does not go down. A challenger better in
       distribution but worse under shift is therefore rejected: the shifted figure is the one that
       predicts what doctors will see on films of other machines.
    5. the golden set (pipeline.data.golden, when configured) is not in the non-inferiority test of 4 (a
       small fixed set gives wide intervals: it would block most promotions for lack of evidence);
       with promotion.golden_no_worse, a challenger significantly worse than the champion on it is
       rejected. Every reason ends with both models' golden-set figures.
    6. the site's confirmed cases (local/, `python -m pipeline site export`), when the data version has
       them: each model is scored at its own site operating point, cross-fitted by patient (never the
       old version's threshold); the challenger must pass params `site.floors` there out of fold, and is
       rejected when its AUC on them is significantly below the champion's, however good it is in
       distribution (a small set: no non-inferiority test, as for the golden set).
    """
    policy = params.promotion
    margin = policy.non_inferiority_margin
    first = policy.first_champion
    ch, champ = scores["challenger"], scores.get("champion")
    ch_m = ch["metrics"]
    n = scores.get("n_test")
    base = {"challenger_version": ch["version"], "champion_version": champ["version"] if champ else None,
            "challenger_score": ch_m.get("stress_mean_auc"),
            "champion_score": champ["metrics"].get("stress_mean_auc") if champ else None,
            "non_inferiority_margin": margin, "n_test": n, "n_stress": scores.get("n_stress"),
            "challenger_metrics": ch_m, "champion_metrics": champ["metrics"] if champ else None,
            "comparison": scores.get("comparison"), "decided_at": now()}
    on = f" on {n} held-out images" if n else ""
    golden = _golden_note(ch_m, champ["metrics"] if champ else None, scores.get("comparison"))

    def _decision(decision: dict) -> dict:   # every reason ends with the golden-set figures
        return jsonable({**decision, "reason": decision["reason"] + golden})

    failed = _all_floor_failures(ch_m, policy, params.site.floors)
    base["floors_failed"] = failed
    if failed:
        return _decision({**base, "promote": False,
                          "reason": f"challenger v{ch['version']} is under the floors{on}: " + "; ".join(failed)})
    if champ is None:
        if first == "promote_if_floors":
            return _decision({**base, "promote": True, "reason":
                              f"no champion yet; challenger v{ch['version']} passes every floor (held-out AUC "
                              f"{fmt(ch_m.get('auc'))}, worst-shift AUC {fmt(ch_m.get('stress_worst_auc'))}{on})"})
        return _decision({**base, "promote": False, "reason":
                          f"no champion yet and promotion.first_champion={first!r}: promote by hand "
                          f"(python -m pipeline promote --version {ch['version']} --force)"})
    if champ["version"] == ch["version"]:
        return _decision({**base, "promote": False, "reason": f"v{ch['version']} is already the champion"})
    champ_failed = _all_floor_failures(champ["metrics"], policy, params.site.floors)
    base["champion_floors_failed"] = champ_failed
    if champ_failed:
        return _decision({**base, "promote": True, "reason":
                          f"champion v{champ['version']} is now under the floors{on} ({'; '.join(champ_failed)}); "
                          f"challenger v{ch['version']} passes them"})
    comparison = scores.get("comparison") or {}
    if not comparison.get("test") or not comparison.get("stress"):
        return _decision({**base, "promote": False, "reason": "no paired comparison with the champion was made"})
    promote, reason = _paired_verdict(ch["version"], champ["version"], comparison, policy)
    return _decision({**base, "promote": promote, "reason": reason})


def _paired_verdict(ch_version, champ_version, comparison: dict, policy) -> tuple[bool, str]:
    """Rule 4 and 5 of decide(): the paired AUC differences, each against the margin."""
    margin = policy.non_inferiority_margin
    parts, worse, unproven = [], [], []
    for key in ("test", "stress", "external"):   # the golden set: its own rule below (small, fixed)
        c = comparison.get(key)
        if not c:
            continue
        parts.append(f"{COMPARISON_LABELS[key]} {c['delta']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]")
        if c["high"] < 0:
            worse.append(COMPARISON_LABELS[key])
        elif c["low"] < -margin:
            unproven.append(COMPARISON_LABELS[key])
    verdict = (f"challenger v{ch_version} vs champion v{champ_version}, AUC difference "
               f"[{int(100 * policy.confidence)} % interval]: " + "; ".join(parts))
    gold = comparison.get("golden")
    if policy.golden_no_worse and gold and gold["high"] < 0:
        worse.append(COMPARISON_LABELS["golden"])
    local = comparison.get("local")   # few cases: significantly worse rejects; no non-inferiority test
    if local:
        verdict += f"; {COMPARISON_LABELS['local']} {local['delta']:+.4f} [{local['low']:+.4f}, {local['high']:+.4f}]"
        if local["high"] < 0:
            worse.append(COMPARISON_LABELS["local"])
    if worse:
        return False, f"{verdict}: significantly worse {', '.join(worse)}"
    if unproven:
        return False, f"{verdict}: not shown non-inferior (margin {margin}) {', '.join(unproven)}"
    if comparison["stress"]["delta"] < 0:
        return False, f"{verdict}: no gain under shift"
    return True, f"{verdict}: non-inferior everywhere, not worse under shift"
