"""Kafka down while drivers end: nothing lost, running drivers still polled, readiness says so."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from poller.devstack import KafkaBroker, SparkStandalone, wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, ServiceProcess, driver_state

TOPIC = "outage-events"


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of this test's own (in-memory: a restart forgets topics, data, producer ids)."""
    broker = KafkaBroker(tmp_path / "kafka").start()
    broker.create_topic(TOPIC)
    yield broker
    broker.stop()


def _phases(svc: ServiceProcess, request_ids: list[str]) -> str:
    """Where each request is, for a wait's failure message."""
    return ", ".join(f"{r}={svc.job(r)['phase']}/{svc.job(r)['state']}" for r in request_ids)


def test_events_wait_out_a_broker_outage(
    own_kafka: KafkaBroker,
    spark: SparkStandalone,
    start_service: ServiceFactory,
    job_body: JobBody,
) -> None:
    # Two poll threads and four events waiting: a publish must not hold a thread while it waits.
    svc = start_service(
        POLLER_KAFKA_BOOTSTRAP_SERVERS=own_kafka.bootstrap_servers,
        POLLER_KAFKA_TOPIC=TOPIC,
        POLLER_KAFKA_DELIVERY_TIMEOUT_S="6",
        POLLER_SCHEDULER_THREADS="2",
    )
    before = EventReader(own_kafka.bootstrap_servers, TOPIC)
    # One event before the outage, so the idempotent producer holds a producer id the
    # restarted broker will not know.
    assert svc.post("/submit", json={"request_id": "early", "job": job_body()}).status_code == 202
    before.wait_for_keys({"early"}, timeout_s=60)
    before.close()

    own_kafka.kill()  # gone before any driver below can end
    short = {
        f"during-{i}": svc.post(
            "/submit", json={"request_id": f"during-{i}", "job": job_body(seconds=i)}
        )
        for i in range(3)
    }
    assert {a.status_code for a in short.values()} == {202}, [a.text for a in short.values()]
    long_running = svc.post("/submit", json={"request_id": "long", "job": job_body(seconds=300)})
    assert long_running.status_code == 202, long_running.text
    watched = [*short, "long"]
    wait_for(
        lambda: all(svc.job(r)["phase"] == "publishing" for r in short),
        120,
        "the short drivers to end while Kafka is down",
        describe=lambda: _phases(svc, watched),
    )
    cancelled = svc.delete("/jobs/long")  # its event cannot go out now: 202, not 200
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["phase"] == "publishing"
    ready = svc.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["kafka"] == "broker unreachable"
    assert ready.json()["checks"]["database"] == "ok"
    for request_id, answer in short.items():
        assert driver_state(spark, answer.json()["submission_id"]) == "FINISHED", request_id

    # A running driver is still polled every interval while four events wait.
    running = svc.post("/submit", json={"request_id": "running", "job": job_body(seconds=300)})
    assert running.status_code == 202, running.text
    wait_for(lambda: svc.job("running")["polls"] >= 1, 30, "the first poll of 'running'")
    polls, since = svc.job("running")["polls"], time.monotonic()
    log_mark = len(svc.logs())
    time.sleep(10)
    rate = (svc.job("running")["polls"] - polls) / (time.monotonic() - since)
    print(f"kafka outage: running driver polled {rate:.2f}/s at a 1 s interval, 4 events waiting")
    assert rate >= 0.7, f"running driver starved: {rate:.2f} polls/s"
    during = svc.logs()[log_mark:]
    assert during.count("waiting for Kafka") <= 1, during[-3000:]
    assert "poll of" not in during, during[-3000:]

    own_kafka.start()
    own_kafka.create_topic(TOPIC)
    back_at = time.monotonic()
    after = EventReader(own_kafka.bootstrap_servers, TOPIC)
    by_key = after.wait_for_keys({*short, "long"}, timeout_s=120)
    print(
        f"kafka outage: all events delivered {time.monotonic() - back_at:.1f}s after the "
        "broker returned"
    )
    after.close()
    for request_id, found in by_key.items():
        assert len({e.value["event_id"] for e in found}) == 1, request_id
        expected = "CANCELLED" if request_id == "long" else "FINISHED"
        assert found[0].value["state"] == expected, request_id
    wait_for(lambda: svc.job("long")["phase"] == "done", 30, "the cancel to be settled")
    wait_for(lambda: svc.get("/readyz").status_code == 200, 30, "ready again")
    assert "replacing the Kafka producer" in svc.logs()
    svc.delete("/jobs/running", params={"kill": "true"})
    submission = long_running.json()["submission_id"]
    requests.post(f"{spark.rest_url}/v1/submissions/kill/{submission}", timeout=10)
