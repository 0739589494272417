"""The site's database from outside the site: the Django models of django_app/diagnosis, opened in an
Airflow task the way the site opens them. Used by the drift DAG and the retraining DAG's shadow wait;
importing this module imports nothing of Django (the DAG files import it when they are parsed)."""
from __future__ import annotations

import os


def site_django(read_only: bool = True) -> None:
    """The site's own models (django_app/diagnosis) in this task. XRAY_SITE_DATABASE_URL (compose: a
    read-only role on the web database) wins over DATABASE_URL for the tasks that only read."""
    if read_only and os.environ.get("XRAY_SITE_DATABASE_URL"):
        os.environ["DATABASE_URL"] = os.environ["XRAY_SITE_DATABASE_URL"]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xray_site.settings")
    import django

    django.setup()


def shadow_evidence(name: str, version: int) -> dict:
    """What the site's shadow mode has seen of a pending challenger (diagnosis.shadow.evidence)."""
    site_django()
    from diagnosis import shadow

    return shadow.evidence(name, int(version))
