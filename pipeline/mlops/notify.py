"""Notifications of the retraining DAG: always to the task log; to a webhook and/or by e-mail when configured.

Used two ways:
  * the DAG's `notify` task calls `send()` with the decision summary (promoted / rejected, metrics,
    MLflow links);
  * `XrayNotifier` (an Airflow notifier) is every task's `on_failure_callback`, so a failed run tells
    someone which task failed and why.

Environment:
  XRAY_NOTIFY_WEBHOOK      URL that receives a JSON POST {"text": ..., "event": ..., ...} (Slack/Teams/
                           Mattermost incoming webhooks read "text")
  XRAY_NOTIFY_EMAIL        comma-separated recipients; enables e-mail
  XRAY_SMTP_HOST / XRAY_SMTP_PORT (default localhost / 25), XRAY_SMTP_USER / XRAY_SMTP_PASSWORD
  (optional login), XRAY_SMTP_STARTTLS=1, XRAY_NOTIFY_FROM (default xray-retrain@localhost)
  XRAY_MLFLOW_UI           base URL of the MLflow UI for links (default $MLFLOW_TRACKING_URI)

Only the standard library is imported: this module is loaded when the DAG file is parsed.
Delivery problems are logged, never raised: a broken webhook must not fail a promotion that happened.
"""
from __future__ import annotations

import json
import logging
import os
import smtplib
import urllib.request
from email.message import EmailMessage

from airflow.sdk import BaseNotifier

log = logging.getLogger("xray.notify")


def mlflow_ui() -> str:
    return (os.environ.get("XRAY_MLFLOW_UI") or os.environ.get("MLFLOW_TRACKING_URI")
            or "http://127.0.0.1:5000").rstrip("/")


def run_link(run_id: str | None, experiment_id: str | None = None) -> str | None:
    if not run_id:
        return None
    if experiment_id:
        return f"{mlflow_ui()}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{mlflow_ui()}/#/runs/{run_id}"   # not every MLflow UI resolves this; prefer experiment ids


def model_link(name: str | None, version: str | int | None) -> str | None:
    if not name or version in (None, ""):
        return None
    return f"{mlflow_ui()}/#/models/{name}/versions/{version}"


def send(subject: str, text: str, payload: dict | None = None) -> dict:
    """Deliver one notification on every configured channel; returns {channel: "ok" | error}."""
    payload = dict(payload or {})
    log.info("NOTIFY %s\n%s", subject, text)
    delivered = {"log": "ok"}
    url = os.environ.get("XRAY_NOTIFY_WEBHOOK")
    if url:
        body = json.dumps({"text": f"{subject}\n{text}", "subject": subject, **payload}, default=str).encode()
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                delivered["webhook"] = "ok" if response.status < 300 else f"HTTP {response.status}"
        except Exception as exc:  # noqa: BLE001 - delivery is best effort, the reason is logged
            delivered["webhook"] = f"{type(exc).__name__}: {exc}"
    recipients = [r.strip() for r in os.environ.get("XRAY_NOTIFY_EMAIL", "").split(",") if r.strip()]
    if recipients:
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = os.environ.get("XRAY_NOTIFY_FROM", "xray-retrain@localhost")
        message["To"] = ", ".join(recipients)
        message.set_content(text + "\n\n" + json.dumps(payload, indent=2, default=str))
        try:
            host = os.environ.get("XRAY_SMTP_HOST", "localhost")
            with smtplib.SMTP(host, int(os.environ.get("XRAY_SMTP_PORT", "25")), timeout=15) as smtp:
                if os.environ.get("XRAY_SMTP_STARTTLS") == "1":
                    smtp.starttls()
                if os.environ.get("XRAY_SMTP_USER"):
                    smtp.login(os.environ["XRAY_SMTP_USER"], os.environ.get("XRAY_SMTP_PASSWORD", ""))
                smtp.send_message(message)
            delivered["email"] = "ok"
        except Exception as exc:  # noqa: BLE001
            delivered["email"] = f"{type(exc).__name__}: {exc}"
    for channel, status in delivered.items():
        if status != "ok":
            log.error("notification via %s failed: %s", channel, status)
    return delivered


def decision_message(summary: dict) -> tuple[str, str]:
    """Subject and text for a finished retraining (summary built by the DAG's notify task)."""
    decision = summary.get("decision") or {}
    outcome = "PROMOTED" if decision.get("promote") else "REJECTED"
    version = summary.get("version")
    data = summary.get("data_version") or "?"
    subject = f"[xray-retrain] challenger v{version} {outcome} (data {str(data)[:8]})"
    lines = [f"Decision: {outcome} -- {decision.get('reason', 'no reason given')}"]
    champion = summary.get("champion_before")
    lines.append(f"Champion before: {('v' + str(champion)) if champion else 'none'}; "
                 f"champion now: v{summary.get('champion_after') or '?'}")
    for who in ("challenger", "champion"):
        entry = (summary.get("scores") or {}).get(who) or {}
        scores = entry.get("metrics") if isinstance(entry, dict) else None
        if isinstance(scores, dict):
            lines.append(f"{who} v{entry.get('version')} on {summary['scores'].get('n_test', '?')} held-out images:")
            shown = {k: scores[k] for k in ("auc", "sensitivity", "specificity", "threshold", "ece",
                                            "stress_mean_auc", "stress_worst_auc", "stress_worst_sensitivity",
                                            "external_auc", "golden_auc", "golden_sensitivity",
                                            "golden_specificity") if isinstance(scores.get(k), (int, float))}
            lines.append("  " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    lines.append(f"Data version: {data} ({summary.get('nfiles', '?')} files); trigger: {summary.get('trigger')}")
    for label, link in (("MLflow run", summary.get("run_link")), ("Model version", summary.get("model_link"))):
        if link:
            lines.append(f"{label}: {link}")
    return subject, "\n".join(lines)


class XrayNotifier(BaseNotifier):
    """Failure (or any event) notifier for callbacks: `on_failure_callback=XrayNotifier()`."""

    template_fields = ("event",)

    def __init__(self, event: str = "failure"):
        super().__init__()
        self.event = event

    def notify(self, context) -> None:
        ti = context.get("ti") or context.get("task_instance")
        dag_run = context.get("dag_run")
        error = context.get("exception") or context.get("reason")
        task_id = getattr(ti, "task_id", None)
        run_id = getattr(dag_run, "run_id", None)
        dag_id = getattr(dag_run, "dag_id", None) or getattr(context.get("dag"), "dag_id", None)
        subject = f"[xray-retrain] {self.event.upper()}: {dag_id} task {task_id or '-'}"
        text = (f"Run {run_id}: task {task_id} {self.event}"
                f" (try {getattr(ti, 'try_number', '?')}).\nError: {error}")
        log_url = getattr(ti, "log_url", None)
        if log_url:
            text += f"\nLog: {log_url}"
        send(subject, text, {"event": self.event, "dag_id": dag_id, "run_id": run_id,
                             "task_id": task_id, "error": str(error) if error else None})
