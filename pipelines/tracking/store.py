"""Opening an MLflow tracking store that other processes write to at the same time.

* A new SQLite store is created (tables and migrations) by the first process that uses it. Eight
  trainings started at once on a fresh ./mlflow.db all ran MLflow's migrations together and left
  it half migrated ("table _alembic_tmp_latest_metrics already exists"). So the first use of a
  local SQLite store in a process holds an exclusive lock on a file beside it (mlflow.db.lock).
* Writes that collide get "database is locked" (SQLite), and two processes that create the same
  experiment at once collide too: those calls are retried with exponential backoff (with jitter,
  so the writers spread out); any other error is raised at once. A call that needed retries says
  so on stderr, in one line, so load can be measured.
"""
from __future__ import annotations

import fcntl
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

TRANSIENT = ("database is locked", "database table is locked")  # lower case
ATTEMPTS = 8
FIRST_DELAY_S = 0.1


def is_transient(err: BaseException) -> bool:
    text = str(err).lower()
    return any(marker in text for marker in TRANSIENT)


class RetryingClient:
    """An MlflowClient whose calls retry transient write collisions. `create_experiment` that
    loses a race to a concurrent creator returns the winner's experiment id."""

    def __init__(self, client):
        self._client = client

    def create_experiment(self, name: str, *args, **kwargs) -> str:
        try:
            return self._call("create_experiment", name, *args, **kwargs)
        except Exception as err:
            if "already exists" not in str(err).lower():
                raise
            existing = self._call("get_experiment_by_name", name)
            if existing is None:
                raise
            return existing.experiment_id

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: self._call(name, *args, **kwargs)

    def _call(self, name: str, *args, **kwargs):
        delay = FIRST_DELAY_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                result = getattr(self._client, name)(*args, **kwargs)
            except Exception as err:
                if attempt == ATTEMPTS or not is_transient(err):
                    raise
                time.sleep(delay * (1 + random.random()))
                delay *= 2
                continue
            if attempt > 1:
                print(f"vaezoo: tracking call {name} retried {attempt - 1} time(s)", file=sys.stderr)
            return result


_READY: set[str] = set()  # SQLite stores this process has opened (created and migrated) already


def open_client(uri: str) -> RetryingClient:
    """An MlflowClient for `uri` that retries write collisions; a local SQLite store is opened
    for the first time under a file lock, so only one process creates or migrates it."""
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///") or uri in _READY:
        return RetryingClient(MlflowClient(tracking_uri=uri))
    database = Path(uri[len("sqlite:///"):])
    database.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(f"{database}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = RetryingClient(MlflowClient(tracking_uri=uri))  # creates and migrates the store if needed
        # The model registry has a store of its own, also created on first use.
        client.search_registered_models(max_results=1)
    finally:
        os.close(lock)  # releases the lock
    _READY.add(uri)
    return client
