"""Replicas of the service on one store, each reaching Spark through a proxy of its own: the
helpers of the tests that run several at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from poller.devstack import Postgres, wait_for
from tests.support import DelayingProxy, Event, EventReader, ServiceProcess


@dataclass
class Replica:
    """One slot of the deployment: its own proxy to Spark, and the process now in it."""

    name: str
    env: dict[str, str]
    proxy: DelayingProxy
    workdir: Path
    generation: int = 0
    svc: ServiceProcess | None = None
    past: list[ServiceProcess] = field(default_factory=list)

    def start(self) -> ServiceProcess:
        self.generation += 1
        replica_id = f"{self.name}{self.generation}"
        svc = ServiceProcess(
            {
                **self.env,
                "POLLER_SPARK_REST_URL": self.proxy.url,
                "POLLER_REPLICA_ID": replica_id,
                "POLLER_LOG_FORMAT": "json",
            },
            self.workdir / f"{replica_id}.log",
        )
        self.svc = svc
        self.past.append(svc)
        return svc.start()

    @property
    def current(self) -> ServiceProcess:
        assert self.svc is not None
        return self.svc

    def shards(self) -> list[int] | None:
        """The shards it polls now (None: not up)."""
        svc = self.svc
        if svc is None or not svc.running():
            return None
        try:
            held = svc.http.get(f"{svc.url}/readyz", timeout=2).json().get("shards")
        except (requests.RequestException, ValueError):
            return None
        return [int(shard) for shard in held]

    def role(self) -> str | None:
        svc = self.svc
        if svc is None or not svc.running():
            return None
        try:
            return str(svc.http.get(f"{svc.url}/readyz", timeout=2).json().get("role"))
        except (requests.RequestException, ValueError):
            return None


def leader_of(slots: list[Replica]) -> Replica | None:
    leading = [slot for slot in slots if slot.role() == "leader"]
    assert len(leading) <= 1, f"two leaders at once: {[s.name for s in leading]}"
    return leading[0] if leading else None


def wait_leader(slots: list[Replica], timeout_s: float = 30) -> Replica:
    found: list[Replica] = []

    def one() -> bool:
        leader = leader_of(slots)
        if leader is not None:
            found.append(leader)
        return leader is not None

    wait_for(one, timeout_s, "a leader")
    return found[-1]


def log_times(svc: ServiceProcess, needle: str) -> list[float]:
    """When (epoch seconds) the process logged lines containing ``needle``."""
    return [
        datetime.fromisoformat(record["time"]).timestamp()
        for record in svc.log_records()
        if needle in str(record.get("message", ""))
    ]


def published_by(event: Event) -> str:
    return event.headers.get("poller-replica", "")


def terminate_sessions(postgres: Postgres, application_name: str) -> int:
    engine = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            ended = conn.scalar(
                sa.text(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM "
                    "pg_stat_activity WHERE application_name = :name) AS t"
                ),
                {"name": application_name},
            )
    finally:
        engine.dispose()
    return int(ended or 0)


def submit(svc: ServiceProcess, request_id: str, job: dict[str, Any]) -> str:
    answer = svc.post("/submit", json={"request_id": request_id, "job": job})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["submission_id"])


def one_event_each(events: EventReader, request_ids: set[str]) -> dict[str, list[Event]]:
    by_key = events.wait_for_keys(request_ids, timeout_s=180)
    assert set(by_key) == request_ids, (
        f"events for requests never made: {set(by_key) - request_ids}"
    )
    for request_id, found in by_key.items():
        ids = {event.value["event_id"] for event in found}
        assert len(ids) == 1, f"{request_id}: {len(ids)} distinct event ids"
        # Whoever sent a copy, it is the same event: built from the one stored record.
        assert all(event.value == found[0].value for event in found), [e.value for e in found]
    return by_key
