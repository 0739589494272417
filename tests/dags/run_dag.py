"""Run the retraining DAG once with a real `dag.test()` and print a JSON summary as the last line.

Used by the tests and the benchmark in a subprocess, so Airflow's configuration (AIRFLOW_HOME,
AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, ...) comes from that process's environment alone.

    python tests/dags/run_dag.py [--conf '{"force": true, "overrides": ["train.epochs=1"]}']

Summary: {"state", "run_id", "wall_s", "tasks": {task_id: {"state", "seconds", "tries"}}, "xcom": {task_id: value},
"steps": {task_id: {step: seconds}} (pipeline.timing)}
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "xray_retrain"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conf", default="{}", help="run conf (JSON)")
    parser.add_argument("--dags", default=str(REPO / "dags"))
    parser.add_argument("--dag-id", default=DAG_ID)
    args = parser.parse_args()

    started = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=args.dags)
    if bag.import_errors:
        print(json.dumps({"state": "import_error", "errors": bag.import_errors}))
        return 2
    dag = bag.dags[args.dag_id]
    dr = dag.test(run_conf=json.loads(args.conf))
    wall = time.perf_counter() - started

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    tasks, xcom, steps = {}, {}, {}
    with create_session() as session:
        for ti in dr.get_task_instances(session=session):
            seconds = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else None
            tasks[ti.task_id] = {"state": str(ti.state) if ti.state else None, "seconds": seconds,
                                 "tries": ti.try_number}
        rows = session.query(XComModel).filter(XComModel.dag_id == args.dag_id, XComModel.run_id == dr.run_id,
                                               XComModel.key.in_(("return_value", "steps"))).all()
        for row in rows:
            value = row.value
            if isinstance(value, (str, bytes)):
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            (steps if row.key == "steps" else xcom)[row.task_id] = value
    print(json.dumps({"state": str(dr.state), "run_id": dr.run_id, "wall_s": round(wall, 2),
                      "tasks": tasks, "xcom": xcom, "steps": steps}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
