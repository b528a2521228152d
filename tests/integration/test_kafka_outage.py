"""Kafka down while drivers finish: nothing lost, readiness says so, polling goes on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from poller.devstack import KafkaBroker, SparkStandalone, wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, driver_state

TOPIC = "outage-events"


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of this test's own (in-memory: a restart forgets topics, data, producer ids)."""
    broker = KafkaBroker(tmp_path / "kafka").start()
    broker.create_topic(TOPIC)
    yield broker
    broker.stop()


def test_events_wait_out_a_broker_outage(
    own_kafka: KafkaBroker,
    spark: SparkStandalone,
    start_service: ServiceFactory,
    job_body: JobBody,
) -> None:
    svc = start_service(
        POLLER_KAFKA_BOOTSTRAP_SERVERS=own_kafka.bootstrap_servers,
        POLLER_KAFKA_TOPIC=TOPIC,
        POLLER_KAFKA_DELIVERY_TIMEOUT_S="6",
    )
    before = EventReader(own_kafka.bootstrap_servers, TOPIC)
    # One event before the outage, so the idempotent producer holds a producer id the
    # restarted broker will not know.
    assert svc.post("/submit", json={"request_id": "early", "job": job_body()}).status_code == 202
    before.wait_for_keys({"early"}, timeout_s=60)
    before.close()

    short = {
        f"during-{i}": svc.post(
            "/submit", json={"request_id": f"during-{i}", "job": job_body(seconds=i)}
        )
        for i in range(3)
    }
    assert {a.status_code for a in short.values()} == {202}
    long_running = svc.post("/submit", json={"request_id": "long", "job": job_body(seconds=300)})
    assert long_running.status_code == 202
    own_kafka.stop()

    wait_for(
        lambda: all(svc.job(r)["phase"] == "publishing" for r in short),
        120,
        "drivers to end while Kafka is down",
    )
    ready = svc.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["kafka"] == "broker unreachable"
    assert ready.json()["checks"]["database"] == "ok"
    polls = svc.job("long")["polls"]
    wait_for(lambda: svc.job("long")["polls"] >= polls + 3, 30, "polls of the running driver")
    for request_id, answer in short.items():
        assert driver_state(spark, answer.json()["submission_id"]) == "FINISHED", request_id

    own_kafka.start()
    own_kafka.create_topic(TOPIC)
    back_at = time.monotonic()
    after = EventReader(own_kafka.bootstrap_servers, TOPIC)
    by_key = after.wait_for_keys(set(short), timeout_s=120)
    print(
        f"kafka outage: all events delivered {time.monotonic() - back_at:.1f}s after the "
        "broker returned"
    )
    after.close()
    for request_id, found in by_key.items():
        assert len({e.value["event_id"] for e in found}) == 1, request_id
        assert found[0].value["state"] == "FINISHED"
    wait_for(lambda: svc.get("/readyz").status_code == 200, 30, "ready again")
    assert "replacing the Kafka producer" in svc.logs()
    svc.delete("/jobs/long", params={"kill": "true"})
