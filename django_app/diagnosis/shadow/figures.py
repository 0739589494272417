"""What a shadowed version's answers show: counts, agreement with the champion's answers, and, on
the confirmed cases, both models' sensitivity, specificity and ECE on the same cases
(pipeline.evaluation.compare.paired_answers). `evidence` is what the DAG reads before a decision."""
from __future__ import annotations

from django.db.models import F
from django.utils import timezone

from pipeline.evaluation.compare import paired_answers

from ..local_cases import cases
from ..models import Diagnosis, ShadowAnswer, ShadowTally

PAGE = "/staff/shadow/"
FIGURES = ("sensitivity", "specificity", "ece")


def versions(model_name: str) -> list[str]:
    """Every version of `model_name` that was shadowed (answered, dropped or failed), newest first."""
    seen = set(ShadowAnswer.objects.filter(model_name=model_name).values_list("model_version", flat=True))
    seen |= set(ShadowTally.objects.filter(model_name=model_name).values_list("model_version", flat=True))
    return sorted(seen, key=lambda v: (int(v) if v.isdigit() else -1, v), reverse=True)


def answers_of(model_name: str, version) -> "ShadowAnswer.objects":
    return ShadowAnswer.objects.filter(model_name=model_name, model_version=str(version))


def counts(model_name: str, version) -> dict:
    """answered / dropped / failed, refused (among answered), agreement and the period shadowed.
    Agreement: the share of answered requests where the challenger gave the champion's label (a
    refusal by the challenger's gate counts as a disagreement: the doctor got an answer)."""
    rows = answers_of(model_name, version)
    tally = ShadowTally.objects.filter(model_name=model_name, model_version=str(version)).first()
    answered = rows.count()
    agreed = rows.filter(label=F("diagnosis__label")).count()
    first = rows.order_by("created").values_list("created", flat=True).first()
    since = min(t for t in (first, tally.first_seen if tally else None) if t) if (first or tally) else None
    return {"version": int(version) if str(version).isdigit() else version, "answered": answered,
            "dropped": tally.dropped if tally else 0, "failed": tally.failed if tally else 0,
            "refused": rows.filter(label="").count(),
            "since": since.isoformat(timespec="seconds") if since else None,
            "days": round((timezone.now() - since).total_seconds() / 86400, 4) if since else 0.0,
            "agreement": agreed / answered if answered else None}


def confirmed(model_name: str, version, resamples: int = 2000) -> dict:
    """Paired figures on the confirmed cases (local_cases.cases: adjudication wins, unsure left out,
    the patients kept for judging) that both answered: challenger = a, champion = b."""
    shadow = {str(d): (p, t) for d, p, t in answers_of(model_name, version).exclude(label="")
              .values_list("diagnosis_id", "probability", "threshold")}
    truth = {c.id: c.label for c in cases(model_name) if c.id in shadow}
    served = {str(d): (p, t) for d, p, t in Diagnosis.objects.filter(pk__in=list(truth))
              .values_list("id", "probability", "threshold")}
    ids = sorted(truth)
    return paired_answers([truth[i] for i in ids], [shadow[i][0] for i in ids], [shadow[i][1] for i in ids],
                          [served[i][0] for i in ids], [served[i][1] for i in ids], resamples=resamples)


def evidence(model_name: str, version: int) -> dict:
    """The shadow's evidence on one version, for the promotion decision (the DAG) and reviewers:
    {"version", "answered", "dropped", "failed", "since", "days", "agreement", "confirmed",
     "challenger": {"sensitivity"|"specificity"|"ece": {"value", "low", "high"}} | None,
     "champion": {...} | None, "page"}; 95 % intervals (Clopper-Pearson; bootstrap for ECE)."""
    figures = counts(model_name, version)
    paired = confirmed(model_name, version)
    return {"version": figures["version"], "answered": figures["answered"], "dropped": figures["dropped"],
            "failed": figures["failed"], "since": figures["since"], "days": figures["days"],
            "agreement": figures["agreement"], "confirmed": paired["n"],
            "challenger": paired["a"], "champion": paired["b"], "page": PAGE}


def disagreements(model_name: str, version, limit: int = 24) -> list[ShadowAnswer]:
    """The newest answers where the challenger's label (or refusal) differs from the champion's."""
    return list(answers_of(model_name, version).exclude(label=F("diagnosis__label"))
                .select_related("diagnosis").order_by("-created")[:limit])
