"""The database going away mid-flight: the scheduler thread survives and nothing is lost."""

from __future__ import annotations

import time

import sqlalchemy as sa

from poller.devstack import Postgres, wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, poll_job_ids


def test_service_rides_out_a_database_outage(
    own_postgres: Postgres,
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
) -> None:
    svc = start_service(POLLER_DATABASE_URL=own_postgres.url)
    submitted = {
        f"outage-{i}": svc.post(
            "/submit", json={"request_id": f"outage-{i}", "job": job_body(seconds=8 + i)}
        )
        for i in range(3)
    }
    assert {a.status_code for a in submitted.values()} == {202}
    wait_for(lambda: svc.job("outage-2")["polls"] >= 1, 60, "polling under way")

    own_postgres.stop_server()
    # The lease's connection is gone with the server: the process stops polling at once and
    # stands by, serving the API, until it holds the lease again.
    wait_for(lambda: "lost the scheduler lease" in svc.logs(), 60, "the outage to be noticed")
    wait_for(lambda: svc.get("/readyz").json()["role"] == "standby", 30, "standing by")
    assert svc.running()
    assert svc.get("/healthz").status_code == 200
    for answer in (
        svc.get("/jobs/outage-0"),
        svc.get("/jobs"),
        svc.post("/submit", json={"request_id": "during-outage", "job": job_body()}),
        svc.delete("/jobs/outage-0"),
    ):
        assert answer.status_code == 503, answer.text
        assert answer.json()["detail"].startswith("database unavailable")
    # Readiness is checked in the background every 2 s: it follows within a few seconds. (Its
    # answer may be 503 for standing by before the database check has run again.)
    wait_for(
        lambda: svc.get("/readyz").json()["checks"]["database"].startswith("database unavailable"),
        15,
        "the readiness check to find the database gone",
    )
    assert svc.get("/readyz").status_code == 503

    own_postgres.start()
    back_at = time.monotonic()
    by_key = events.wait_for_keys(set(submitted), timeout_s=120)
    print(
        f"database outage: all events out {time.monotonic() - back_at:.1f}s after "
        "PostgreSQL returned"
    )
    for request_id, found in by_key.items():
        assert {e.value["state"] for e in found} == {"FINISHED"}, request_id
        assert found[0].value["submission_id"] == submitted[request_id].json()["submission_id"]
    assert svc.running()
    wait_for(lambda: poll_job_ids(own_postgres.url) == set(), 30, "poll jobs removed")
    engine = sa.create_engine(own_postgres.url)
    with engine.connect() as conn:
        phases = set(conn.scalars(sa.text("SELECT phase FROM poller_requests")))
    engine.dispose()
    assert phases == {"done"}
    assert "during-outage" not in by_key
    assert svc.get("/jobs/during-outage").status_code == 404
