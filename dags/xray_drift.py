"""The daily input-drift DAG: were yesterday's requests still like the champion's training X-rays?

Three tasks.

drift_report reads the site's records of the window (answers with their gate score, refusals with
their reason; never an image) from the site's database (XRAY_SITE_DATABASE_URL, in compose a
read-only role; else DATABASE_URL, as the site itself), the champion's reference from the
registry (stored in its checkpoint by training, pipeline.inference.gate), computes pipeline.evaluation.drift's report,
logs it to MLflow (experiment `<registry.experiment>-drift`) and notifies (pipeline/mlops/notify.py) when a limit of params.yaml `drift:` is crossed.
It also says whether the served operating point is backed by enough confirmed local cases.

realised_performance logs sensitivity, specificity, AUC and ECE on the confirmed cases per served
version and month to MLflow (experiment `<registry.experiment>-site`) and notifies when the champion
is under params `site.floors`.

site_adapt then fits the site's calibration and threshold on the confirmed local cases and serves them
when the checks pass (pipeline.mlops.site_version; the same as `python -m pipeline site adapt`).

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
from xray_site.from_tasks import site_django  # noqa: E402  (nothing of Django imported yet)


def site_records(since, until) -> list[dict]:
    """The site's records in [since, until)."""
    site_django()
    from diagnosis import monitoring

    return monitoring.records(since, until)


def confirmed_for(name: str, version: int) -> int:
    """Confirmed local cases answered by the champion's weights (site versions share them)."""
    site_django()
    from diagnosis import local_cases
    from pipeline.mlops import server, site_version

    client = server.connect()
    mine = site_version.weights_version(client, name, version)
    versions = {}
    return sum(1 for c in local_cases.cases() if versions.setdefault(
        c.model_version, site_version.weights_version(client, name, c.model_version)) == mine)


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
        confirmed = confirmed_for(config.model_name(params), mv.version)
    except server.NoChampion:
        reference, version, confirmed = None, "none", None
    rep = drift.report(records, reference, params.drift, confirmed, params.site.min_cases)
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

@task(retries=2, retry_delay=timedelta(seconds=30))
def site_adapt() -> dict:
    """The site's operating point from its confirmed cases (`python -m pipeline site adapt`)."""
    import json

    from pipeline.mlops import notify, server, site_version
    from pipeline.settings import config

    site_django()
    from diagnosis import local_cases
    from diagnosis.management.commands.site import format_adapt

    params = config.load_params(os.environ.get("XRAY_PARAMS") or None)
    try:
        out = site_version.adapt(local_cases.cases(), params, name=config.model_name(params))
    except server.NoChampion as exc:
        return {"promoted": False, "reason": str(exc)}
    text = format_adapt(out)
    print(text)
    if out["promoted"]:
        out["notified"] = notify.send(f"[chest-xray] site operating point served: v{out['version']}", text,
                                      {"event": "site_adapt", **json.loads(json.dumps(server.jsonable(out)))})
    return json.loads(json.dumps(server.jsonable(out), default=str))

@task(retries=2, retry_delay=timedelta(seconds=30))
def realised_performance() -> dict:
    """Realised performance per served version and month on the confirmed cases (what staff see
    on /staff/performance/), logged to MLflow; notify when the champion's figures of the month
    are under params `site.floors` on enough cases (site.min_per_class of the class)."""
    import json

    import mlflow

    from pipeline.mlops import loading, notify
    from pipeline.settings import config

    site_django()
    from diagnosis import local_cases

    params = config.load_params(os.environ.get("XRAY_PARAMS") or None)
    rows = local_cases.realised()
    champion = loading.champion_version(config.model_name(params))
    mlflow.set_tracking_uri(config.tracking_uri())
    mlflow.set_experiment(f"{params.registry.experiment}-site")
    with mlflow.start_run(run_name=f"realised-{pendulum.now('UTC'):%Y-%m-%d}") as run:
        for r in rows:
            step = int(r["month"].replace("-", ""))  # YYYYMM: one point per month
            for key in ("sensitivity", "specificity", "auc", "ece", "n", "positives", "negatives"):
                if r.get(key) is not None:
                    mlflow.log_metric(f"v{r['model_version']}.{key}", float(r[key]), step=step)
        mlflow.log_dict({"rows": rows}, "realised.json")
    current = [r for r in rows if r["model_version"] == str(champion)][:1]   # its newest month
    below = [f"{key} {r[key]:.3f} < floor {floor} ({r[count]} cases, {r['month']})"
             for r in current for key, floor in params.site.floors.items()
             for count in [{"sensitivity": "positives", "specificity": "negatives"}.get(key, "n")]
             if r.get(key) is not None and r[count] >= params.site.min_per_class and r[key] < floor]
    out = {"run_id": run.info.run_id, "champion": champion, "rows": len(rows), "below_floors": below}
    if below:
        out["notified"] = notify.send(f"[chest-xray] champion v{champion} under the floors on confirmed cases",
                                      "\n".join(below), {"event": "realised", **out})
    return json.loads(json.dumps(out, default=str))


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
    drift_report()
    realised_performance() >> site_adapt()


xray_drift()
