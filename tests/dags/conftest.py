"""Fixtures of the data-versioning and DAG tests (helpers live in dagtest_utils.py)."""
from __future__ import annotations

import os
import uuid

import pytest

from dagtest_utils import DataWorld, Webhook


@pytest.fixture
def world(tmp_path, shared_datasets) -> DataWorld:
    return DataWorld(tmp_path / "world")


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database on 127.0.0.1:5432 (user postgres), dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    host = os.environ.get("XRAY_TEST_PG_HOST", "127.0.0.1")
    try:
        admin = psycopg2.connect(host=host, port=5432, user="postgres", dbname="postgres", connect_timeout=3)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable on {host}:5432: {exc}")
    admin.autocommit = True
    name = f"airflow_dagtest_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg2://postgres@{host}:5432/{name}"
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    admin.close()