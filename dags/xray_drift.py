"""The daily input-drift DAG: were yesterday's requests still like the champion's training X-rays?

One task. It reads the site's records of the window (answers with their gate score, refusals with
their reason; never an image) from the site's database (XRAY_SITE_DATABASE_URL, in compose a
read-only role; else DATABASE_URL, as the site itself), the champion's reference from the
registry (stored in its checkpoint by training, pipeline.inference.gate), computes pipeline.evaluation.drift's report,
logs it to MLflow (experiment `<registry.experiment>-drift`) and notifies (pipeline/mlops/notify.py) when a limit of params.yaml `drift:` is crossed.
Nothing heavy is imported when this file is parsed.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

DAG_ID = "xray_drift"
REPO = Path(__file__).resolve().parent.parent

from pipeline.mlops.notify import XrayNotifier  # noqa: E402


def site_records(since, until) -> list[dict]:
    """The site's records in [since, until), through its own models (django_app/diagnosis).
    XRAY_SITE_DATABASE_URL (compose: a read-only role on the web database) wins over DATABASE_URL."""
    if os.environ.get("XRAY_SITE_DATABASE_URL"):
        os.environ["DATABASE_URL"] = os.environ["XRAY_SITE_DATABASE_URL"]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xray_site.settings")
    import django

    django.setup()
    from diagnosis import monitoring

    return monitoring.records(since, until)


@dag(
    dag_id=DAG_ID,
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "chest-xray", "monitoring"],
    default_args={"owner": "ml-platform", "on_failure_callback": XrayNotifier("failure")},
    params={"hours": Param(24, type="number", minimum=1, description="length of the window, ending now")},
)
def xray_drift():
    @task(retries=2, retry_delay=timedelta(seconds=30))
    def drift_report() -> dict:
        import json

        import mlflow

        from pipeline.mlops import notify
        from pipeline.settings import config
        from pipeline.evaluation import drift
        from pipeline.mlops import server, loading

        params = config.load_params(os.environ.get("XRAY_PARAMS") or None)
        until = pendulum.now("UTC")
        since = until - timedelta(hours=float(get_current_context()["params"].get("hours", 24)))
        records = site_records(since, until)
        try:
            predictor, mv = loading.load_champion(config.model_name(params))
            reference, version = (predictor.gate.state or {}).get("reference"), str(mv.version)
        except server.NoChampion:
            reference, version = None, "none"
        rep = drift.report(records, reference, params.drift)
        mlflow.set_tracking_uri(config.tracking_uri())
        run_id = drift.log_to_mlflow(rep, f"{params.registry.experiment}-drift",
                                     run_name=f"drift-{until:%Y-%m-%d}",
                                     tags={"champion_version": version, "window_start": since.isoformat(),
                                           "window_end": until.isoformat()})
        print(rep.summary())
        out = {**rep.to_dict(), "run_id": run_id, "champion_version": version}
        if rep.drifted:
            out["notified"] = notify.send(
                f"[chest-xray] input drift: {len(rep.alerts)} alert(s) for champion v{version}",
                rep.summary() + f"\nMLflow: {notify.run_link(run_id)}",
                {"event": "drift", **json.loads(json.dumps(out, default=str))})
        return json.loads(json.dumps(out, default=str))

    drift_report()


xray_drift()
