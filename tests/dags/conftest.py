"""Fixtures of the data-versioning and DAG tests (helpers live in dagtest_utils.py)."""
from __future__ import annotations

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
