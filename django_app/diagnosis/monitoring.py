"""Input drift as the site saw it: every answer (gate score, label) and every refusal, per day,
compared with the champion's reference (pipeline.evaluation.drift). Used by the staff page and by the
daily drift DAG (dags/xray_drift.py), which logs the report to MLflow and notifies."""
from __future__ import annotations

import datetime as dt
from collections import Counter

from django.utils import timezone

from .models import Diagnosis, Refusal


def records(since: dt.datetime, until: dt.datetime) -> list[dict]:
    """What pipeline.evaluation.drift.report reads: one dict per request in [since, until)."""
    answered = Diagnosis.objects.filter(created__gte=since, created__lt=until).values_list(
        "created", "gate_score", "label")
    refused = Refusal.objects.filter(created__gte=since, created__lt=until).values_list(
        "created", "gate_score", "reason")
    out = [{"created": c, "gate_score": s, "label": label, "refused": False} for c, s, label in answered]
    out += [{"created": c, "gate_score": s, "label": "", "refused": True, "reason": r} for c, s, r in refused]
    return sorted(out, key=lambda r: r["created"])


def daily(reference: dict | None, days: int = 30, now: dt.datetime | None = None) -> list[tuple[dt.date, object]]:
    """[(day, DriftReport)] for the last `days` days (today included), oldest first, alerting at
    the `drift:` limits of the pipeline's settings, as the daily drift DAG reads them."""
    from django.conf import settings

    from pipeline.evaluation import drift

    limits = settings.XRAY_PIPELINE_PARAMS.drift
    now = now or timezone.now()
    start = (now - dt.timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = records(start, now + dt.timedelta(seconds=1))
    by_day: dict[dt.date, list[dict]] = {}
    for r in rows:
        by_day.setdefault(timezone.localtime(r["created"]).date(), []).append(r)
    out = []
    for i in range(days):
        day = (start + dt.timedelta(days=i)).date()
        out.append((day, drift.report(by_day.get(day, []), reference, limits)))
    return out


def refusal_reasons(since: dt.datetime, limit: int = 8) -> list[tuple[str, int]]:
    """Most frequent refusal reasons (the part after the gate's common prefix)."""
    from pipeline.inference.gate import PREFIX

    reasons = Refusal.objects.filter(created__gte=since).values_list("reason", flat=True)
    short = Counter(r.removeprefix(PREFIX).split(" (")[0] for r in reasons)
    return short.most_common(limit)


SERIES = (("refusal_rate", "refused", "#c0392b"), ("positive_rate", "answered PNEUMONIA", "#2c6fbb"),
          ("share_above_p90", "inputs beyond the training p90 distance (expected 10%)", "#e08e0b"))


def svg_chart(days: list[tuple[dt.date, object]], width: int = 760, height: int = 240) -> str:
    """An inline SVG line chart (0-100 %) of the daily rates; days without requests are gaps."""
    left, right, top, bottom = 44, 30, 12, 28
    w, h = width - left - right, height - top - bottom
    n = max(1, len(days) - 1)

    def x(i):
        return left + w * i / n

    def y(v):
        return top + h * (1 - v)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Daily input drift" class="drift-chart" font-size="11" font-family="sans-serif">']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" fill="#666">{v:.0%}</text>')
    for i, (day, _) in enumerate(days):
        if i % 5 == 0 or i == len(days) - 1:
            parts.append(f'<text x="{x(i):.1f}" y="{height - 8}" text-anchor="middle" fill="#666">'
                         f'{day:%d %b}</text>')
    for key, label, colour in SERIES:
        segment: list[str] = []
        segments = []
        for i, (_, rep) in enumerate(days):
            v = getattr(rep, key) if rep.n else None
            if v is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{x(i):.1f},{y(min(1.0, v)):.1f}")
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(min(1.0, v)):.1f}" r="2.5" fill="{colour}">'
                         f'<title>{label}: {v:.1%}</title></circle>')
        if segment:
            segments.append(segment)
        for seg in segments:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(seg)}"/>')
    parts.append("</svg>")
    return "".join(parts)
