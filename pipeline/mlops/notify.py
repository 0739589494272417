"""Notifications of the DAGs: always to the task log; by e-mail and to chat / webhooks through Airflow's
notifier providers when their Airflow Connection exists.

Used two ways:
  * the DAG tasks call `send()` (the retraining decision, an approval waiting, drift alerts);
  * `XrayNotifier` (an Airflow notifier) is every task's `on_failure_callback`, so a failed run tells
    someone which task failed and why.

Channels: one Airflow Connection each (credentials live in Airflow, never in this code or env names):
  xray_smtp     conn type `smtp`: host, port, login / password; extra `from_email`, `to` (recipients,
                comma-separated), `disable_tls` / `disable_ssl` (JSON booleans), `timeout`, `retry_limit`.
                Sent with apache-airflow-providers-smtp's SmtpNotifier.
  xray_apprise  conn type `apprise`: extra `config` = {"path": "<apprise URL>"} or a list of them, e.g.
                `slack://T/B/X`, `msteams://...`, `mmost://host/token`, `json://host/path`.
                Sent with apache-airflow-providers-apprise's AppriseNotifier.
A missing connection is a channel not configured (the log only). Set them in the UI (Admin >
Connections), with `airflow connections add`, or as AIRFLOW_CONN_XRAY_SMTP / AIRFLOW_CONN_XRAY_APPRISE.
XRAY_MLFLOW_UI: base URL of the MLflow UI for links (default $MLFLOW_TRACKING_URI).

Delivery problems are logged, never raised: a broken mail server must not fail a promotion that happened.
"""
from __future__ import annotations

import html
import json
import logging
import os

from airflow.sdk import BaseNotifier

from pipeline.mlops.server import ui_url

log = logging.getLogger("xray.notify")

SMTP_CONN, APPRISE_CONN = "xray_smtp", "xray_apprise"


def mlflow_ui() -> str:
    """server.ui_url(), but absolute: a mail or chat message has no page to be relative to, so
    without $XRAY_MLFLOW_UI its links fall back to the tracking URI."""
    return (ui_url() or os.environ.get("MLFLOW_TRACKING_URI") or "http://127.0.0.1:5000").rstrip("/")


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


def _connection(conn_id: str):
    """The Airflow Connection `conn_id`, or None when it is not defined (channel off)."""
    from airflow.sdk.bases.hook import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _email(conn, subject: str, text: str, payload: dict) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    to = str(conn.extra_dejson.get("to") or "")
    if not to.strip():
        raise ValueError(f"connection {SMTP_CONN} has no recipients (extra `to`)")
    details = json.dumps(payload, indent=2, default=str)
    body = f"<pre>{html.escape(text)}</pre>\n<pre>{html.escape(details)}</pre>"
    SmtpNotifier(to=to, subject=subject, html_content=body, smtp_conn_id=SMTP_CONN).notify({})


class _AppriseErrors(logging.Handler):
    """Apprise reports a failed delivery in its log, not to its caller: collect it."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _apprise(subject: str, text: str, failure: bool) -> None:
    from airflow.providers.apprise.notifications.apprise import AppriseNotifier
    from apprise import NotifyType

    errors, logger = _AppriseErrors(), logging.getLogger("apprise")
    logger.addHandler(errors)
    try:
        AppriseNotifier(body=text, title=subject, apprise_conn_id=APPRISE_CONN,
                        notify_type=NotifyType.FAILURE if failure else NotifyType.INFO).notify({})
    finally:
        logger.removeHandler(errors)
    if errors.messages:
        raise ConnectionError("; ".join(errors.messages))


def send(subject: str, text: str, payload: dict | None = None) -> dict:
    """Deliver one notification on every configured channel; returns {channel: "ok" | error}."""
    payload = dict(payload or {})
    log.info("NOTIFY %s\n%s", subject, text)
    delivered = {"log": "ok"}
    channels = {"email": (SMTP_CONN, lambda conn: _email(conn, subject, text, payload)),
                "apprise": (APPRISE_CONN, lambda conn: _apprise(subject, text, payload.get("event") == "failure"))}
    for channel, (conn_id, deliver) in channels.items():
        try:
            conn = _connection(conn_id)
            if conn is None:
                continue
            deliver(conn)
            delivered[channel] = "ok"
        except Exception as exc:  # noqa: BLE001 - delivery is best effort, the reason is logged
            delivered[channel] = f"{type(exc).__name__}: {exc}"
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
