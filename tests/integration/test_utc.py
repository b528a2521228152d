"""Times are UTC whatever the PostgreSQL server's time zone: records and events end in Z."""

from __future__ import annotations

from poller.devstack import Postgres
from tests.conftest import JobBody, ServiceFactory
from tests.databases import new_pg_database
from tests.support import EventReader


def test_events_are_utc_on_a_server_in_another_time_zone(
    postgres: Postgres, start_service: ServiceFactory, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service(POLLER_DATABASE_URL=new_pg_database(postgres, "Europe/Paris"))
    answer = svc.post("/submit", json={"request_id": "paris", "job": job_body()})
    assert answer.status_code == 202, answer.text
    [event] = events.wait_for_keys({"paris"})["paris"]
    assert event.value["submitted_at"].endswith("Z"), event.value
    assert event.value["completed_at"].endswith("Z"), event.value
    assert event.headers["ce_time"].endswith("Z"), event.headers
    record = svc.job("paris")
    for field in ("submitted_at", "last_polled_at", "completed_at"):
        assert record[field].endswith("Z"), (field, record[field])
