"""The daily retraining DAG of the chest X-ray pneumonia model (Airflow 3, TaskFlow).

Thin tasks over the `pipeline` package; nothing heavy (torch, mlflow, dvc) is imported when this
file is parsed: every such import is inside a task body.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import (Asset, AssetOrTimeSchedule, BaseSensorOperator, CronTriggerTimetable, Param, PokeReturnValue,
                         dag, get_current_context, task)
from airflow.sdk.exceptions import AirflowSkipException

DAG_ID = "xray_retrain"
REPO = Path(__file__).resolve().parent.parent          # the project (params.yaml)

from pipeline import timing  # noqa: E402  (`pipeline` is installed: pip install -e .)
from pipeline.mlops.notify import XrayNotifier  # noqa: E402
from pipeline.settings.config import DATA_ASSET_URI, load_params, parse  # noqa: E402
from pipeline.settings.params import Dag  # noqa: E402


def _dag_settings() -> Dag:
    """The `dag:` section of params.yaml (or $XRAY_PARAMS), read by the one loader at parse time: the
    retries and timeout of the tasks. A broken file must not hide the DAG: defaults, and the run's
    first task reports the error."""
    try:
        return load_params(os.environ.get("XRAY_PARAMS") or None).dag
    except (OSError, ValueError):
        return Dag(retrain_on_unchanged_data=False, train_timeout_minutes=90, retries=3, retry_delay_seconds=30)


SETTINGS = _dag_settings()
# Where a retry can help (git/dvc pull from a remote, calls to the MLflow server): exponential back-off.
RETRY = dict(retries=SETTINGS.retries, retry_delay=timedelta(seconds=SETTINGS.retry_delay_seconds),
             retry_exponential_backoff=2.0, max_retry_delay=timedelta(minutes=10))
# Where it cannot (bad data, a training that diverged, an exhausted timeout): fail at once.
NO_RETRY = dict(retries=0)

DOC = """
### Chest X-ray pneumonia: daily retraining

Runs when a new data version is published (the dataset's Asset, `dvc://chest-xray/data/chest_xray`)
and daily as a fallback. Retrains the ResNet18 classifier **when the DVC data version changed**, and promotes the new model
(`champion` alias in the MLflow registry) **only when the promotion policy in `params.yaml` says it is
better** on the same held-out data. Doctors are served `models:/<name>@champion`.

| task | what it does | on failure |
|---|---|---|
| `detect` | `git pull` (if the repo has an upstream), `dvc pull data/chest_xray`; compares the dataset hash with the `data_version` tag of the champion and of every decided (promoted/rejected) version. **Skips the rest** when that data was already decided, unless the run param `force` is true. | retried with back-off |
| `validate` | decodes every image; the report (rejected files + reasons) is in this task's log; fails when more than `data.max_rejected_fraction` is rejected | no retry: fix the data |
| `train` | trains a challenger, logs it to MLflow, registers a model version | no retry; `execution_timeout` |
| `evaluate` | scores challenger **and** champion now, on the same held-out split and the fixed golden set (`evaluate.golden_dir`, refused when its content differs from the pinned fingerprint) | retried |
| `decide` | applies the promotion policy; a challenger it would promote that must wait is tagged `decision=pending_shadow` / `pending_approval` | retried |
| `shadow` | sensor (rescheduled every `promotion.shadow.check_minutes`): waits until the pending challenger has answered `min_cases` live requests in shadow over `min_days` (the site's `diagnosis.shadow.evidence`); passes at once when both are 0 or the policy rejected; **skipped after `max_days`, which rejects** | retried |
| `approval` | with `promotion.approval: required`, **waits for a person**: Airflow's human-in-the-loop task (UI: Browse > Required Actions) shows the decision, its evidence and the model card; Approve / Reject with a comment. No answer within `approval_timeout_hours` rejects. Skipped with `auto` | retried |
| `verdict` | the final decision (policy, shadow, reviewer; who approved and when go to the decision): branch to `promote` or `reject` | retried |
| `promote` / `reject` | moves `champion` (old one becomes `previous_champion`) / keeps `challenger`, with the reason (and `approval.by/at/comment`) as tags; promote is idempotent | retried |
| `notify` | sends the decision with metrics and MLflow links: task log, and the Airflow Connections `xray_smtp` (e-mail) / `xray_apprise` (chat, webhooks) when they exist | |

Every task failure notifies too. **Manual run** (Trigger DAG w/ config):
`{"force": true, "overrides": ["train.epochs=3", "train.lr=0.001"]}` -- overrides are
`section.key=value` strings applied on top of `params.yaml` for this run only; only `train.*`,
`model.*`, `preprocess.*` and `evaluate.*` (the promotion policy, data split and registry are not).
New data arrives with `make data DATA=<folder>` (dvc add + git commit + dvc push).
"""


# A run's `overrides` may change how the challenger is trained, never how it is judged: the
# promotion policy (promotion.*), the data split and validation gates (data.*: seed and
# subset_per_class choose the held-out patients), the registered model (registry.*) and the DAG's
# own switches (dag.*) come from params.yaml (or $XRAY_PARAMS) alone, which are reviewed in git.
# Anyone allowed to trigger a run could otherwise promote a worse model ("promotion.floors.auc=0").
# The stress set (evaluate.stress_*) is what champion and challenger are compared on: policy too.
OVERRIDABLE = ("train.", "model.", "preprocess.", "evaluate.target_sensitivity", "evaluate.threshold_rule",
               "evaluate.calibration", "evaluate.batch_size")


def check_overrides(overrides) -> list[str]:
    """The overrides outside OVERRIDABLE (empty list: all allowed)."""
    return [o for o in overrides if not str(o).split("=", 1)[0].strip().startswith(OVERRIDABLE)]


def _run_params(context):
    """params.yaml (or $XRAY_PARAMS) with this run's `overrides` applied, read ONCE per run (by
    `detect`) and handed to every later task in `info["params"]`: an edit of the file during a run
    cannot split the run across two settings. A bad or forbidden override fails the run at once."""
    overrides = list(context["params"].get("overrides") or [])
    forbidden = check_overrides(overrides)
    try:
        if forbidden:
            raise ValueError(f"not overridable in a DAG run: {forbidden} (allowed: "
                             f"{', '.join(k + '*' for k in OVERRIDABLE)}; change params.yaml instead)")
        return load_params(os.environ.get("XRAY_PARAMS") or None, overrides)
    except (KeyError, ValueError) as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"bad params (overrides {overrides}): {exc}") from exc


def _short(run_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in run_id)[:80]


# The tasks: thin, lazy (heavy imports inside), wired by xray_retrain below.
@task.short_circuit(**RETRY)
def detect() -> dict | bool:
    """Fetch the newest data version; continue only when it differs from the champion's (or forced)."""
    from pipeline.settings import config
    from pipeline.mlops import loading, versions
    from pipeline.data import versioning

    context = get_current_context()
    params = _run_params(context)
    try:
        info = versioning.update()
    except versioning.NoDataVersion as exc:       # nothing to retry until someone imports data
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from exc
    # the golden evaluation set: its own pointer and remote (read-only credentials); checked
    # against its pinned fingerprint by validate, train and evaluate
    info["golden"] = versioning.pull_golden(params.evaluate.golden_dir)
    # the model of this run's params ($XRAY_PARAMS), passed to every registry call: the registry
    # never guesses it from the default params.yaml
    name = config.model_name(params)
    champion = loading.champion_version(name)             # None: no model registered / no champion yet
    champion_data = (versions.status(name, limit=1)["champion"] or {}).get("data_version") if champion else None
    forced = bool(context["params"].get("force")) or params.dag.retrain_on_unchanged_data
    # Data already decided (a version trained on it was promoted or rejected) is not retrained:
    # after a rejection, daily runs would retrain on the same data, test on the same split, and
    # sooner or later promote a chance win. The decision is read from the registry's tags.
    decided = versions.decided_for_data(info["hash"], name) if info["hash"] != champion_data else None
    new_data = info["hash"] != champion_data and decided is None
    info.update(params=params.to_dict(), model_name=name, champion=champion, champion_data_version=champion_data, new_data=new_data,
                forced=forced, decided=decided)
    served = f"champion v{champion} was trained on {champion_data}" if champion else "no champion yet"
    state = ("NEW DATA" if new_data else f"already decided: v{decided['version']} {decided['decision']}"
             if decided else "unchanged")
    print(f"data version {info['hash']} ({info['nfiles']} files, git {str(info['git_commit'])[:8]}); "
          f"{served}: {state}{' (forced run)' if forced else ''}")
    return info if (new_data or forced) else False

@task(**NO_RETRY)
def validate(info: dict) -> dict:
    """Decode every image once (filling the preprocessing cache); fail above the rejection limit."""
    from pipeline.data import dataset
    from pipeline.data import training_data

    timing.take()   # not an earlier task's (dag.test runs every task in one process)
    params = parse(info["params"])
    try:   # the golden set is verified against its pin first; its patients are dropped
        with timing.step("decode and check"):
            _, report = training_data.prepare(info["data_root"], params)
    except dataset.DatasetError as exc:   # incl. golden.GoldenSetError (missing, unpinned, edited)
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"dataset {info['hash'][:8]} rejected: {exc}") from exc
    print(report.summary())
    timing.hand_on(get_current_context()["ti"])
    summary = report.to_dict()
    return {"checked": summary.get("checked"), "rejected": len(report.rejected),
            "duplicates": len(getattr(report, "duplicates", []) or []), "counts": summary.get("counts"),
            "golden_excluded": len(report.golden_excluded), "golden": report.golden or None}

# queue: with the CeleryExecutor a (GPU) worker listening on `training` takes this task alone;
# the LocalExecutor ignores it.
@task(**NO_RETRY, execution_timeout=timedelta(minutes=SETTINGS.train_timeout_minutes),
      queue=os.environ.get("XRAY_TRAINING_QUEUE", "training"))
def train(info: dict, report: dict) -> dict:
    """Train the challenger; tracking.tracked_train logs everything to MLflow and registers a version."""
    from pipeline.settings import config
    from pipeline.mlops import tracking

    context = get_current_context()
    timing.take()
    params = parse(info["params"])
    run_id = context["dag_run"].run_id
    trigger = "forced" if info["forced"] else "new-data"
    result = tracking.tracked_train(
        params, Path(info["data_root"]), config.runs_dir() / f"airflow-{_short(run_id)}",
        run_name=f"airflow {context.get('ds') or pendulum.now('UTC').to_date_string()} "
                 f"data {info['hash'][:8]} {trigger}",
        tags={"trigger": f"airflow:{trigger}", "airflow.dag_run_id": run_id,
              "airflow.overrides": ",".join(context["params"].get("overrides") or []) or "none",
              "dvc.git_commit": str(info.get("git_commit"))},
        data_version=info["hash"])
    keep = ("run_id", "version", "experiment_id", "model_name", "metrics", "wall_time_s", "seconds")
    timing.hand_on(context["ti"])
    return {k: result[k] for k in keep if k in result}

@task(**RETRY)
def evaluate(info: dict, trained: dict) -> dict:
    """Score the challenger and the current champion on the same held-out split, now."""
    from pipeline.mlops import candidates
    from pipeline.data import golden

    timing.take()
    params = parse(info["params"])
    try:
        scores = candidates.evaluate_candidates(trained["version"], params, Path(info["data_root"]))
    except golden.GoldenSetError as exc:   # edited since validate: no retry can fix it
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from exc
    timing.hand_on(get_current_context()["ti"])
    return scores

@task(**RETRY)
def decide(info: dict, trained: dict, scores: dict) -> dict:
    """The promotion policy (params.yaml `promotion:`) decides; a challenger it would promote that must
    first prove itself in shadow or be signed off is tagged `pending_*` (the site shadows it)."""
    from pipeline.mlops import aliases, policy, review

    params = parse(info["params"])
    decision = policy.decide(scores, params)
    get_current_context()["ti"].xcom_push(key="decision", value=decision)
    print(f"decision: {'PROMOTE' if decision['promote'] else 'REJECT'} -- {decision['reason']}")
    waits = [state for state, needed in (("pending_shadow", review.shadow_required(params.promotion.shadow)),
                                         ("pending_approval", params.promotion.approval == "required")) if needed]
    if decision["promote"] and waits:
        aliases.mark_pending(trained["version"], waits[0], f"the policy would promote: {decision['reason']}",
                             name=trained["model_name"])
    return decision


def _pulled(context, task_id: str, key: str = "return_value"):
    return context["ti"].xcom_pull(task_ids=task_id, key=key)


class ShadowSensor(BaseSensorOperator):
    """Waits until the pending challenger has answered enough live requests in shadow, and long
    enough (params.yaml promotion.shadow); at once when none is required or the policy rejected.
    Rescheduled every check_minutes (no worker held); past max_days it is skipped (soft_fail) and
    `verdict` rejects. The thresholds come from this run's params (detect), read when it runs."""

    def execute(self, context):
        shadow = parse(_pulled(context, "detect")["params"]).promotion.shadow
        self.poke_interval = shadow.check_minutes * 60
        self.timeout = shadow.max_days * 86400
        return super().execute(context)

    def poke(self, context):
        from pipeline.mlops import review

        shadow = parse(_pulled(context, "detect")["params"]).promotion.shadow
        decision, trained = _pulled(context, "decide"), _pulled(context, "train")
        if not decision["promote"] or not review.shadow_required(shadow):
            return PokeReturnValue(is_done=True, xcom_value={"required": False})
        from xray_site.from_tasks import shadow_evidence

        evidence = shadow_evidence(trained["model_name"], trained["version"])
        missing = review.shadow_shortfall(evidence, shadow)
        print(f"shadow evidence of v{trained['version']}: {evidence}; "
              f"{'enough' if not missing else 'waiting: ' + '; '.join(missing)}")
        return PokeReturnValue(is_done=not missing, xcom_value=evidence)


class SignOff(HITLOperator):
    """Airflow's human-in-the-loop approval (Required Actions in the UI): with promotion.approval
    `required`, a reviewer reads the decision and its evidence and approves or rejects with a comment.
    Skipped when the policy rejected or approval is `auto`. No answer within approval_timeout_hours:
    Airflow answers the default, Reject, with no user, which `verdict` records as a timeout."""

    def __init__(self, **kwargs):
        from pipeline.mlops.review import APPROVE, REJECT

        comment = Param("", type="string", title="Comment", description="why you approve or reject (recorded on the version)")
        super().__init__(**{**kwargs, "subject": "Promote the challenger?", "options": [APPROVE, REJECT],
                            "defaults": [REJECT], "params": {"comment": comment}})

    def execute(self, context):
        from pipeline.mlops import aliases, notify, review, server

        params = parse(_pulled(context, "detect")["params"])
        decision, trained = _pulled(context, "decide"), _pulled(context, "train")
        if not decision["promote"] or params.promotion.approval != "required":
            raise AirflowSkipException(f"no sign-off asked (promotion.approval={params.promotion.approval}, "
                                       f"policy {'promotes' if decision['promote'] else 'rejects'})")
        name, version = trained["model_name"], int(trained["version"])
        hours = params.promotion.approval_timeout_hours
        self.response_timeout = timedelta(hours=hours) if hours > 0 else None   # 0: wait without limit
        self.subject = f"Promote {name} v{version} to champion?"
        card = server.connect().get_model_version(name, str(version)).description or ""
        self.body = review.review_body(name, version, decision, _pulled(context, "evaluate"), _pulled(context, "shadow"),
                                       card, params, model_link=notify.model_link(name, version),
                                       site_url=os.environ.get("XRAY_SITE_URL", ""))
        aliases.mark_pending(version, "pending_approval", f"waiting for a reviewer: {decision['reason']}", name=name)
        try:   # the Required Actions page of this task ([api] base_url, AIRFLOW__API__BASE_URL)
            link = self.generate_link_to_ui_from_context(context=context)
        except ValueError:
            link = "Airflow UI, Browse > Required Actions"
        notify.send(f"[xray-retrain] approval needed: {name} v{version}",
                    f"The policy would promote v{version}: {decision['reason']}\n"
                    f"Approve or reject within {hours:g} h: {link}", {"event": "approval", "version": version})
        return super().execute(context)


@task.branch(trigger_rule="none_failed", **RETRY)
def verdict(info: dict, trained: dict) -> str:
    """Promote or reject: the policy's decision, after the shadow wait and the reviewer's answer."""
    from pipeline.mlops import review

    context = get_current_context()
    params = parse(info["params"])
    decision, shadow_out = _pulled(context, "decide", "decision"), _pulled(context, "shadow")
    shadow_now = None
    if decision["promote"] and shadow_out is None and review.shadow_required(params.promotion.shadow):
        from xray_site.from_tasks import shadow_evidence   # timed out: the figures at the end, for the reason

        shadow_now = shadow_evidence(trained["model_name"], trained["version"])
    final = review.final_decision(decision, params, actor=f"airflow:{DAG_ID}/{context['dag_run'].run_id}",
                                  shadow_out=shadow_out, shadow_now=shadow_now,
                                  response=_pulled(context, "approval"))
    context["ti"].xcom_push(key="decision", value=final)
    print(f"verdict: {'PROMOTE' if final['promote'] else 'REJECT'} -- {final['reason']}")
    return "promote" if final["promote"] else "reject"

@task(**RETRY)
def promote(info: dict, trained: dict, scores: dict) -> dict:
    """Move the champion alias; then, when the data version has the site's confirmed cases, serve the
    new champion at its own site operating point (a new version's threshold is never the old one's)."""
    from pipeline.mlops import aliases, site_version

    decision = get_current_context()["ti"].xcom_pull(task_ids="verdict", key="decision")
    result = aliases.promote(trained["version"], decision, name=trained["model_name"])
    done = result.get("promoted") or result.get("already")   # already: a retry of a try that promoted
    if not done:   # e.g. someone promoted another version meanwhile: stale decision
        print(f"not promoted: {result.get('reason')}")
    elif scores.get("local_cases"):
        result["site"] = site_version.adapt_version(trained["version"], scores["local_cases"], parse(info["params"]),
                                                    name=trained["model_name"])
        print(f"site operating point: {result['site']['reason']}")
    return {"outcome": "promoted" if done else "stale", **result}

@task(**RETRY)
def reject(trained: dict) -> dict:
    from pipeline.mlops import aliases

    decision = get_current_context()["ti"].xcom_pull(task_ids="verdict", key="decision")
    return {"outcome": "rejected", **aliases.reject(trained["version"], decision, name=trained["model_name"])}

@task(trigger_rule="none_failed_min_one_success", **NO_RETRY)
def notify(info: dict, trained: dict, scores: dict) -> dict:
    """Tell someone what was decided and why, with the metrics and links to MLflow."""
    from pipeline.mlops import loading, notify

    context = get_current_context()
    decision = context["ti"].xcom_pull(task_ids="verdict", key="decision") or {}
    name = trained.get("model_name")
    summary = {
        "event": "decision", "dag_run_id": context["dag_run"].run_id, "decision": decision,
        "version": trained.get("version"), "data_version": info["hash"], "nfiles": info.get("nfiles"),
        "trigger": "forced" if info.get("forced") else "new data",
        "champion_before": info.get("champion"), "champion_after": loading.champion_version(name),
        "scores": scores, "run_link": notify.run_link(trained.get("run_id"), trained.get("experiment_id")),
        "model_link": notify.model_link(name, trained.get("version")),
    }
    subject, text = notify.decision_message(summary)
    summary["delivered"] = notify.send(subject, text, summary)
    return summary


@dag(
    dag_id=DAG_ID,
    # on every new data version (the publish announces the asset), and daily as a fallback (an
    # announcement that did not reach Airflow, a data engineer without Airflow credentials)
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@daily", timezone="UTC"),
                                 assets=[Asset(name="chest_xray", uri=DATA_ASSET_URI)]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["ml", "chest-xray", "retraining"],
    default_args={"owner": "ml-platform", "on_failure_callback": XrayNotifier("failure")},
    params={
        "force": Param(False, type="boolean", description="retrain even if the data version did not change"),
        "overrides": Param([], type="array", items={"type": "string", "pattern": r"^[a-z_]+(\.[a-z_]+)+=.*$"},
                           description='params.yaml overrides for this run, e.g. ["train.epochs=3"]'),
    },
)
def xray_retrain():
    info = detect()
    report = validate(info)
    trained = train(info, report)
    scores = evaluate(info, trained)
    waited = decide(info, trained, scores) >> ShadowSensor(task_id="shadow", mode="reschedule", soft_fail=True,
                                                           **RETRY)
    branch = verdict(info, trained)
    waited >> SignOff(task_id="approval", **RETRY) >> branch
    outcomes = [promote(info, trained, scores), reject(trained)]
    branch >> outcomes
    outcomes >> notify(info, trained, scores)

xray_retrain()
