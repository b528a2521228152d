"""Finished requests stay queryable (cursor pages, time windows) for the retention, then go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from poller import paging
from poller.db import create_db_engine
from poller.devstack import wait_for
from poller.schemas import DriverState, JobFilter, Phase
from tests.conftest import ServiceFactory
from tests.support import ServiceProcess, done_rows, fill_requests

DAY = datetime(2026, 11, 1, tzinfo=UTC)


def listed(svc: ServiceProcess, limit: int, **params: Any) -> list[str]:
    return [request_id for page in pages(svc, limit, **params) for request_id in page]


def pages(svc: ServiceProcess, limit: int, **params: Any) -> list[list[str]]:
    """Every page of a listing, following next_cursor."""
    found: list[list[str]] = []
    cursor = None
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        answer = svc.get("/jobs", params=query)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        found.append([item["request_id"] for item in page["items"]])
        assert page["next_offset"] is None or cursor is None
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def test_cursor_pages_go_through_a_window_once_in_order_whatever_is_added(
    start_service: ServiceFactory, database_url: str
) -> None:
    rows = done_rows(250, {}, "h", start=DAY)
    for row in rows[1::3]:  # a third failed: a state filter of its own
        row["state"] = DriverState.FAILED.value
    fill_requests(database_url, rows)
    svc = start_service(POLLER_DATABASE_URL=database_url, POLLER_RETENTION_DAYS="0")
    everything = [f"h-{i:05d}" for i in range(250)]
    assert [len(page) for page in pages(svc, 100)] == [100, 100, 50]
    assert listed(svc, 100) == everything

    # A window: since inclusive, until exclusive (submitted_at), and a state within it.
    since, until = DAY + timedelta(milliseconds=10), DAY + timedelta(milliseconds=40)
    window = {"since": since.isoformat(), "until": until.isoformat()}
    assert listed(svc, 7, **window) == everything[10:40]
    failed = listed(svc, 4, state="FAILED", **window)
    assert failed == [rid for rid in everything[10:40] if int(rid[2:]) % 3 == 1]

    # Records added while paging (older and newer) neither shift nor repeat what follows.
    first = svc.get("/jobs", params={"limit": 100}).json()
    fill_requests(database_url, done_rows(5, {}, "a-late", start=DAY - timedelta(days=1)))
    rest = pages_from(svc, first["next_cursor"], 100)
    assert [item["request_id"] for item in first["items"]] + rest == everything


def pages_from(svc: ServiceProcess, cursor: str, limit: int) -> list[str]:
    found: list[str] = []
    while cursor:
        page = svc.get("/jobs", params={"limit": limit, "cursor": cursor}).json()
        found += [item["request_id"] for item in page["items"]]
        cursor = page["next_cursor"]
    return found


# A time with a zone that no UTC time can be: a cursor anyone can forge.
FAR_PAST = datetime.fromisoformat("0001-01-01T00:00:00+05:00")


def test_a_cursor_is_good_for_its_own_filter_only(
    start_service: ServiceFactory, database_url: str
) -> None:
    fill_requests(database_url, done_rows(5, {}, "c", start=DAY))
    svc = start_service(POLLER_DATABASE_URL=database_url, POLLER_RETENTION_DAYS="0")
    cursor = svc.get("/jobs", params={"limit": 2, "state": "FINISHED"}).json()["next_cursor"]
    assert cursor
    for params, phrase in [
        ({"cursor": cursor}, "another state, since or until"),
        ({"cursor": cursor, "state": "FAILED"}, "another state, since or until"),
        ({"cursor": cursor, "state": "FINISHED", "offset": 2}, "cursor or offset"),
        ({"cursor": "bm90IGEgY3Vyc29y", "state": "FINISHED"}, "not one this service gave"),
        ({"cursor": "%%%", "state": "FINISHED"}, "not one this service gave"),
        ({"cursor": "x" * 600}, "cursor"),
        ({"since": DAY.isoformat(), "until": DAY.isoformat()}, "since must be before until"),
        ({"since": "2026-11-01T00:00:00"}, "timezone"),
        ({"until": "yesterday"}, "until"),
        ({"since": "0001-01-01T00:00:00+05:00"}, "since is out of range"),
        ({"until": "9999-12-31T23:00:00-05:00"}, "until is out of range"),
        ({"cursor": paging.encode((FAR_PAST, "c-00001"), JobFilter())}, "not one this service"),
        ({"cursor": paging.encode((DAY, "c-\x00"), JobFilter())}, "not one this service gave"),
    ]:
        answer = svc.get("/jobs", params=params)
        assert answer.status_code == 422, (params, answer.text)
        assert phrase in answer.text, (params, answer.text)
    page = svc.get("/jobs", params={"limit": 2, "state": "FINISHED", "cursor": cursor}).json()
    assert [item["request_id"] for item in page["items"]] == ["c-00002", "c-00003"]


def _requests(database_url: str) -> set[str]:
    engine = create_db_engine(database_url)
    with engine.connect() as conn:
        found = set(conn.scalars(sa.text("SELECT request_id FROM poller_requests")))
    engine.dispose()
    return found


def test_requests_finished_before_the_retention_are_deleted_and_nothing_else(
    start_service: ServiceFactory, database_url: str
) -> None:
    now = datetime.now(UTC)
    old = done_rows(2500, {}, "old", start=now - timedelta(days=40))
    recent = done_rows(3, {}, "recent", start=now - timedelta(days=29))
    # Old, but not finished with their event out: kept whatever their age.
    in_flight = done_rows(2, {}, "in-flight", start=now - timedelta(days=60))
    for row, phase in zip(in_flight, (Phase.POLLING, Phase.PUBLISHING), strict=True):
        row.update(phase=phase.value, state=DriverState.RUNNING.value, completed_at=None)
        row["submission_id"] = None
    fill_requests(database_url, old + recent + in_flight)
    svc = start_service(POLLER_DATABASE_URL=database_url, POLLER_RETENTION_DAYS="30")
    kept = {f"recent-{i:05d}" for i in range(3)} | {f"in-flight-{i:05d}" for i in range(2)}
    wait_for(lambda: _requests(database_url) == kept, 60, "the old requests to be deleted")
    assert svc.get("/jobs/old-00000").status_code == 404
    assert svc.post("/jobs/old-00000/republish").status_code == 404
    metrics = svc.get("/metrics").text
    assert "spark_poller_requests_purged_total 2500.0" in metrics
    # In batches: the log says how many went per turn, and never more than the old ones.
    assert "deleted" in svc.logs()
