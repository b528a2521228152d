"""One driver, one request: adopting a driver an active request already tracks is refused."""

from __future__ import annotations

from poller.devstack import wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader


def test_a_tracked_driver_cannot_be_adopted_again(
    start_service: ServiceFactory, job_body: JobBody, events: EventReader, database_url: str
) -> None:
    svc = start_service(POLLER_DATABASE_URL=database_url)
    first = svc.post("/submit", json={"request_id": "one-driver", "job": job_body(seconds=4)})
    assert first.status_code == 202, first.text
    driver = first.json()["submission_id"]

    for body in (
        {"request_id": "adopt-a", "submission_id": driver},
        {"request_id": "adopt-b", "submission_id": driver, "cluster": "default"},
        {"submission_id": driver},
    ):
        answer = svc.post("/submit", json=body)
        assert answer.status_code == 409, answer.text
        assert "'one-driver'" in answer.json()["detail"], answer.text
        assert driver in answer.json()["detail"]
    assert svc.get("/jobs/adopt-a").status_code == 404
    assert svc.get("/jobs").json()["total"] == 1

    [event] = events.wait_for_keys({"one-driver"})["one-driver"]
    assert event.value["state"] == "FINISHED"
    wait_for(lambda: svc.job("one-driver")["phase"] == "done", 30, "one-driver to be done")
    assert [e.key for e in events.drain() if e.value["submission_id"] == driver] == ["one-driver"]

    # A request that is done no longer tracks its driver: looking at it again is allowed.
    again = svc.post("/submit", json={"request_id": "adopt-after", "submission_id": driver})
    assert again.status_code == 202, again.text
