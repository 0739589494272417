"""Shadow evidence and a person's sign-off before a promotion (params.yaml `promotion.shadow`,
`promotion.approval`): what the DAG's `shadow`, `approval` and `verdict` tasks decide on and what the
reviewer reads. Pure functions of plain dicts: no MLflow, no Airflow, no Django here.

The reviewer's answer arrives as Airflow's human-in-the-loop response (chosen option, the `comment`
field, who and when); `final_decision` turns it into the decision dict aliases.promote / reject record
(`decision["approval"]`, `decision["actor"]`).
"""
from __future__ import annotations

import datetime as _dt

from pipeline.mlops.policy import COMPARISON_LABELS
from pipeline.mlops.server import fmt

APPROVE, REJECT = "Approve", "Reject"   # the options of the approval task (Airflow's ApprovalOperator's)
VIA = "airflow-hitl"
SHADOW_PAGE = "/staff/shadow/"


def shadow_required(shadow) -> bool:
    """promotion.shadow asks for a minimum of live cases or days (both 0: no shadow wait)."""
    return shadow.min_cases > 0 or shadow.min_days > 0


def shadow_shortfall(evidence: dict, shadow) -> list[str]:
    """What the shadow evidence still lacks against promotion.shadow (empty: enough)."""
    missing = []
    if int(evidence.get("answered") or 0) < shadow.min_cases:
        missing.append(f"{int(evidence.get('answered') or 0)} of {shadow.min_cases} live cases answered")
    if float(evidence.get("days") or 0.0) < shadow.min_days:
        missing.append(f"{float(evidence.get('days') or 0.0):.2f} of {shadow.min_days:g} days in shadow")
    return missing


def _when(value) -> str:
    if isinstance(value, _dt.datetime):
        value = value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return str(value or "")


def approval_record(response: dict | None) -> dict | None:
    """decision["approval"] from a human-in-the-loop response; None when nobody answered (timeout:
    Airflow writes the default option with no user)."""
    if not response or not response.get("responded_by_user"):
        return None
    user = response["responded_by_user"]
    return {"by": str(user.get("name") or user.get("id")), "at": _when(response.get("responded_at")),
            "comment": str((response.get("params_input") or {}).get("comment") or "").strip(), "via": VIA}


def final_decision(decision: dict, params, *, actor: str, shadow_out: dict | None,
                   shadow_now: dict | None = None, response: dict | None = None) -> dict:
    """The decision promote / reject apply, after the shadow wait and the sign-off.

    decision: the policy's (policy.decide); shadow_out: what the `shadow` task returned (None: it
    timed out after promotion.shadow.max_days); shadow_now: the evidence read at the end, for the
    reason; response: the approval task's human-in-the-loop response (None: no approval asked)."""
    out = {**decision, "actor": actor, "policy_reason": decision.get("reason", "")}
    if not decision.get("promote"):
        return out
    policy = f"(the policy: {decision.get('reason', '')})"
    shadow = params.promotion.shadow
    if shadow_required(shadow) and shadow_out is None:
        lacking = "; ".join(shadow_shortfall(shadow_now or {}, shadow)) or "evidence unavailable"
        return {**out, "promote": False, "reason": f"not enough shadow evidence after {shadow.max_days:g} days "
                                                   f"(promotion.shadow.max_days): {lacking} {policy}"}
    if params.promotion.approval != "required":
        return out
    approval = approval_record(response)
    chosen = (response or {}).get("chosen_options") or []
    if approval is None:
        hours = params.promotion.approval_timeout_hours
        return {**out, "promote": False, "reason": f"no reviewer answered within {hours:g} h "
                                                   f"(promotion.approval_timeout_hours): rejected {policy}"}
    said = f": {approval['comment']}" if approval["comment"] else " (no comment)"
    if chosen == [APPROVE]:
        return {**out, "approval": approval, "reason": f"approved by {approval['by']}{said} {policy}"}
    return {**out, "promote": False, "approval": approval,
            "reason": f"rejected by {approval['by']} in review{said} {policy}"}


def _row(label: str, ch: dict, champ: dict | None, key: str, comparison: dict | None = None) -> str:
    delta = (f"{comparison['delta']:+.4f} [{comparison['low']:+.4f}, {comparison['high']:+.4f}]"
             if comparison else "")
    return f"| {label} | {fmt(ch.get(key))} | {fmt((champ or {}).get(key)) if champ else ''} | {delta} |"


def evidence_table(scores: dict) -> list[str]:
    """The figures the policy compared, challenger against champion: in distribution, under stress,
    external / golden sets and the site's confirmed cases (those present in the scores)."""
    ch = scores["challenger"]["metrics"]
    champ = (scores.get("champion") or {}).get("metrics")
    comp = scores.get("comparison") or {}
    champ_v = (scores.get("champion") or {}).get("version")
    lines = [f"| figure | challenger v{scores['challenger']['version']} | "
             f"{'champion v' + str(champ_v) if champ_v else 'no champion'} | AUC difference [interval] |",
             "|---|---|---|---|",
             f"| **in distribution** ({scores.get('n_test', '?')} held-out images) | | | |",
             _row("AUC", ch, champ, "auc", comp.get("test"))]
    lines += [_row(k, ch, champ, k) for k in ("sensitivity", "specificity", "ece", "threshold")]
    lines += [f"| **under stress** ({scores.get('n_stress', '?')} shifted images) | | | |",
              _row("mean AUC over shifts", ch, champ, "stress_mean_auc", comp.get("stress"))]
    lines += [_row(f"worst-shift {k}", ch, champ, f"stress_worst_{k}") for k in ("auc", "sensitivity", "specificity")]
    for key, n_key in (("external", "n_external"), ("golden", "golden_n"), ("local", "local_n")):
        if f"{key}_auc" not in ch:
            continue
        n = scores.get(n_key) or ch.get(n_key) or "?"
        lines += [f"| **{COMPARISON_LABELS[key]}** ({n} images) | | | |",
                  _row("AUC", ch, champ, f"{key}_auc", comp.get(key))]
        lines += [_row(k, ch, champ, f"{key}_{k}") for k in ("sensitivity", "specificity", "ece")]
    return lines


def _interval(m: dict | None) -> str:
    if not m:
        return "n/a"
    return f"{fmt(m.get('value'))} [{fmt(m.get('low'))}, {fmt(m.get('high'))}]"


def shadow_lines(evidence: dict | None, shadow, site_url: str) -> list[str]:
    """The shadow evidence in words (contract: diagnosis.shadow.evidence)."""
    page = f"{site_url.rstrip('/')}{(evidence or {}).get('page') or SHADOW_PAGE}"
    if not evidence or not evidence.get("version"):
        return [f"No shadow period was required (promotion.shadow min_cases {shadow.min_cases}, "
                f"min_days {shadow.min_days:g}). Shadow page: [{page}]({page})"]
    agreement = evidence.get("agreement")
    lines = [f"Live requests answered in the background since {evidence.get('since') or '?'} "
             f"({float(evidence.get('days') or 0):.2f} days): **{evidence.get('answered', 0)}** answered, "
             f"{evidence.get('dropped', 0)} dropped (queue full), {evidence.get('failed', 0)} failed. "
             f"Agreement with the champion: **{fmt(agreement) if agreement is not None else 'n/a'}**.",
             f"On {evidence.get('confirmed', 0)} confirmed cases (value [interval]):", "",
             "| | challenger | champion |", "|---|---|---|"]
    for key in ("sensitivity", "specificity", "ece"):
        lines.append(f"| {key} | {_interval((evidence.get('challenger') or {}).get(key))} | "
                     f"{_interval((evidence.get('champion') or {}).get(key))} |")
    return lines + ["", f"Disagreements, with both heat maps: [{page}]({page})"]


def review_body(name: str, version: int, decision: dict, scores: dict, evidence: dict | None, card: str,
                params, *, model_link: str | None, site_url: str) -> str:
    """The approval task's body (Markdown, shown in Airflow's Required Actions): the decision, its
    evidence in distribution, under stress, on local cases and in shadow, links, and the model card."""
    hours = params.promotion.approval_timeout_hours
    lines = [f"**The promotion policy would make v{version} of `{name}` the champion** "
             f"(the model doctors are answered by).", "",
             f"**Policy decision:** {decision.get('reason', '')}", "",
             f"MLflow version: [{model_link}]({model_link})" if model_link else "",
             "", "### Evidence", ""]
    lines += evidence_table(scores)
    lines += ["", "### In shadow (live traffic, answers never shown)", ""]
    lines += shadow_lines(evidence, params.promotion.shadow, site_url)
    lines += ["", "### Your answer",
              f"**Approve** promotes v{version} now; **Reject** keeps the champion. Your name, the time and "
              f"your comment are recorded on the version (tags `approval.by`, `approval.at`, "
              f"`approval.comment`). Without an answer within {hours:g} h the challenger is rejected.",
              "", "### Model card", "", card or "(no model card on the version)"]
    return "\n".join(lines)
