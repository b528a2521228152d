"""A database that stops answering (SIGSTOP: its sockets stay open) gives 503 fast, never a hang."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from poller.db import create_db_engine
from poller.devstack import Postgres, wait_for
from poller.errors import StoreUnavailable
from poller.store import RequestStore
from tests.conftest import JobBody, ServiceFactory
from tests.databases import frozen
from tests.support import ServiceProcess

BOUND_S = 10.0  # each answer while the database hangs


def _timed(svc: ServiceProcess, method: str, path: str, body: Any = None) -> requests.Response:
    started = time.monotonic()
    answer = svc.http.request(method, f"{svc.url}{path}", json=body, timeout=60)
    elapsed = time.monotonic() - started
    print(f"{method} {path}: {answer.status_code} after {elapsed:.1f}s")
    assert elapsed < BOUND_S, f"{method} {path} took {elapsed:.1f}s"
    return answer


def test_api_answers_503_while_the_database_hangs(
    own_postgres: Postgres, start_service: ServiceFactory, job_body: JobBody
) -> None:
    svc = start_service(POLLER_DATABASE_URL=own_postgres.url, POLLER_DATABASE_TIMEOUT_S="2")
    answer = svc.post("/submit", json={"request_id": "before-hang", "job": job_body(seconds=60)})
    assert answer.status_code == 202, answer.text
    wait_for(lambda: svc.job("before-hang")["polls"] >= 1, 60, "before-hang to be polled")

    with frozen(own_postgres):
        for method, path, body in (
            ("GET", "/jobs", None),
            ("GET", "/jobs/before-hang", None),
            (
                "POST",
                "/submit",
                {"request_id": "during-hang", "submission_id": "driver-20990101000000-0000"},
            ),
            ("GET", "/jobs", None),
        ):
            answer = _timed(svc, method, path, body)
            assert answer.status_code == 503, answer.text
            assert answer.json()["detail"].startswith("database unavailable"), answer.text
        assert svc.running()

    # Thawed: the same process serves again, with fresh connections.
    wait_for(lambda: svc.get("/jobs").status_code == 200, 30, "the API to answer 200 again")
    polls = svc.job("before-hang")["polls"]
    wait_for(lambda: svc.job("before-hang")["polls"] > polls, 30, "polling to resume")
    assert svc.get("/jobs/during-hang").status_code == 404
    again = svc.post("/submit", json={"request_id": "after-hang", "job": job_body()})
    assert again.status_code == 202, again.text
    assert svc.delete("/jobs/before-hang?kill=true").status_code in {200, 202}


def test_store_calls_are_bounded_on_a_hung_server(own_postgres: Postgres) -> None:
    engine = create_db_engine(own_postgres.url, timeout_s=1)
    store = RequestStore(engine)
    store.create_schema()
    store.insert("warm", "default", {})  # a pooled connection that will find the server frozen
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SHOW statement_timeout")) == "1s"
        with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
            conn.execute(sa.text("SELECT pg_sleep(5)"))

    calls: list[Callable[[], object]] = [
        store.ping,
        lambda: store.get("warm"),
        lambda: store.insert("x", "default", {}),
    ]
    with frozen(own_postgres):
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                call()
            elapsed = time.monotonic() - started
            print(f"failed after {elapsed:.1f}s")
            assert elapsed < 5

    wait_for(lambda: store.get("warm") is not None, 30, "the store to answer again")
    store.ping()
    engine.dispose()


def test_sqlite_lock_waits_are_bounded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    engine = create_db_engine(url, timeout_s=1)
    store = RequestStore(engine)
    store.create_schema()
    holder = sa.create_engine(url)
    with holder.connect() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # another process holds the write lock
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.insert("blocked", "default", {})
        assert time.monotonic() - started < 5
        conn.rollback()
    store.insert("free", "default", {})
    holder.dispose()
    engine.dispose()
