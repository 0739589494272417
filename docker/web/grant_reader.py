#!/usr/bin/env python3
"""Grant the DAGs' read-only role (WEB_DB_READER_USER, created by
docker/postgres/init-databases.sh) SELECT on exactly the columns they read (issue 25 item 7): the
drift report (diagnosis.monitoring.records), the confirmed cases of the site tasks
(diagnosis.local_cases.CASE_COLUMNS) and the shadow's evidence (diagnosis.shadow.evidence).

Run by docker/web/init.sh after `migrate`, as the tables' owner (the site's DATABASE_URL), so the
grants follow the schema. Column grants, not whole tables: the role never sees the doctors'
logins, sessions, API tokens or the stored images' paths. Idempotent. No-op off PostgreSQL or
without WEB_DB_READER_USER.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "django_app"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xray_site.settings")

# what diagnosis.monitoring.records, local_cases.cases / realised and shadow.evidence select (plus the keys)
COLUMNS = {"Diagnosis": ("id", "created", "gate_score", "label", "logit", "probability", "threshold", "model_name",
                         "model_version", "patient_key"),
           "Refusal": ("id", "created", "gate_score", "reason"),
           "Confirmation": ("id", "diagnosis_id", "label", "adjudicated_label"),
           "ShadowAnswer": ("id", "diagnosis_id", "model_name", "model_version", "created", "label", "probability",
                            "threshold"),
           "ShadowTally": ("id", "model_name", "model_version", "dropped", "failed", "first_seen", "updated")}


def main() -> int:
    reader = os.environ.get("WEB_DB_READER_USER", "").strip()
    import django

    django.setup()
    from django.db import connection

    from diagnosis import models

    if not reader or connection.vendor != "postgresql":
        print("grant_reader: no WEB_DB_READER_USER or not PostgreSQL: nothing to grant")
        return 0
    qn = connection.ops.quote_name
    with connection.cursor() as cur:
        for model, cols in COLUMNS.items():
            table = getattr(models, model)._meta.db_table
            cur.execute(f"GRANT SELECT ({', '.join(map(qn, cols))}) ON {qn(table)} TO {qn(reader)}")
    print(f"grant_reader: {reader} may read {', '.join(COLUMNS)} ({'; '.join(', '.join(c) for c in COLUMNS.values())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
