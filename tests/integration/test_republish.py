"""POST /jobs/{request_id}/republish: a finished request's event again, as it was, for a consumer
that lost it."""

from __future__ import annotations

from poller.devstack import wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader


def test_a_finished_request_is_published_again_exactly_as_it_was(
    start_service: ServiceFactory, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service(POLLER_POLL_INTERVAL_SECONDS="1")
    traced = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    for request_id, seconds in (("done-once", 1), ("still-running", 120)):
        answer = svc.post(
            "/submit",
            json={"request_id": request_id, "labels": {"team": "ingest"}, "job": job_body(seconds)},
            headers=traced,
        )
        assert answer.status_code == 202, answer.text
    [first] = events.wait_for_keys({"done-once"})["done-once"]
    wait_for(lambda: svc.job("done-once")["phase"] == "done", 30, "the request to be done")

    again = svc.post("/jobs/done-once/republish")
    assert again.status_code == 202, again.text
    assert again.json() == {
        "request_id": "done-once",
        "event_id": first.value["event_id"],
        "state": "FINISHED",
    }
    # The ack came before the answer: the copy is on the topic, byte for byte the first, with the
    # same CloudEvents id and the submitter's trace.
    [_, second] = events.wait_for_keys({"done-once"}, timeout_s=30, copies=2)["done-once"]
    assert second.value == first.value
    for header in ("ce_id", "ce_type", "ce_time", "ce_traceparent"):
        assert second.headers[header] == first.headers[header], header
    assert svc.job("done-once")["phase"] == "done"  # nothing about the request changed
    metrics = svc.get("/metrics").text
    assert 'spark_poller_events_republished_total{state="FINISHED"} 1.0' in metrics
    assert 'spark_poller_events_published_total{state="FINISHED"} 1.0' in metrics

    # In flight, its event is not final: refused, and nothing is sent.
    early = svc.post("/jobs/still-running/republish")
    assert early.status_code == 409, early.text
    assert "still in flight" in early.json()["detail"]
    assert svc.post("/jobs/never-submitted/republish").status_code == 404
    assert svc.post("/jobs/bad%20id/republish").status_code == 422
    assert "still-running" not in events.by_key()
    assert svc.delete("/jobs/still-running", params={"kill": "true"}).status_code in {200, 202}
    events.wait_for_keys({"still-running"})
