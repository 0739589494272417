"""Issue 25 item 11: the promotion lock's lease against a real registry.

A waiter gives up after LOCK_WAIT_S; a lock is broken once it is LOCK_STALE_S old. The lease must be
shorter than the wait (else a crashed promote's lock is never broken), and its age is measured on the
MLflow server's clock (creation vs last_updated timestamps of the lock model), so a waiter that
arrives late breaks an old lock at once and a skewed client clock changes nothing.
"""
from __future__ import annotations

import threading
import time

import pytest
from mlflow import MlflowClient

from pipeline.mlops import aliases, server


def test_the_lease_is_shorter_than_the_wait():
    assert aliases.LOCK_STALE_S < aliases.LOCK_WAIT_S


def test_a_lease_not_shorter_than_the_wait_is_refused(mlflow_server, model_name):
    client = server.connect(mlflow_server)
    with pytest.raises(ValueError, match="stale"):
        with aliases.promotion_lock(client, model_name, wait_s=120, stale_s=300):
            pass


def test_the_lock_lives_outside_the_models_namespace(mlflow_server, model_name):
    """Searches and permissions by the served model's name (or prefix) never meet the lock."""
    lock = aliases.lock_name(model_name)
    assert not lock.startswith(model_name)
    client = server.connect(mlflow_server)
    client.create_registered_model(model_name)
    with aliases.promotion_lock(client, model_name, wait_s=10, stale_s=5):
        assert [m.name for m in client.search_registered_models(f"name LIKE '{model_name}%'")] == [model_name]
        assert client.get_registered_model(lock)
    assert client.search_registered_models(f"name = '{lock}'") == []


def test_an_old_lock_is_broken_at_once_by_a_late_waiter(mlflow_server, model_name):
    """The lock of a crashed promote, already older than the lease on the server's clock, is broken
    by the first waiter to see it: no waiter has to watch it for a whole lease first."""
    client = server.connect(mlflow_server)
    client.create_registered_model(aliases.lock_name(model_name), tags={"owner": "crashed"})
    time.sleep(2.0)
    start = time.monotonic()
    with aliases.promotion_lock(client, model_name, wait_s=1.5, stale_s=1.0) as owner:
        assert client.get_registered_model(aliases.lock_name(model_name)).tags["owner"] == owner
    assert time.monotonic() - start < 1.5


def test_a_live_holder_is_waited_for_not_broken(mlflow_server, model_name):
    client = server.connect(mlflow_server)
    inside = threading.Event()

    def hold():
        with aliases.promotion_lock(client, model_name, wait_s=10, stale_s=5):
            inside.set()
            time.sleep(1.5)
    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    start = time.monotonic()
    with aliases.promotion_lock(MlflowClient(mlflow_server), model_name, wait_s=10, stale_s=5):
        waited = time.monotonic() - start
    holder.join(10)
    assert 0.5 < waited < 5        # entered when the holder released, not by breaking its lock

