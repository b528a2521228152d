"""One process schedules a store: a second one on the same database waits as a standby."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from poller.devstack import Postgres, wait_for
from tests.conftest import JobBody, SlowSpark
from tests.databases import new_pg_database
from tests.support import DelayingProxy, EventReader, ServiceProcess


@pytest.fixture
def slow_create(slow_spark: SlowSpark) -> DelayingProxy:
    """Spark's REST API, but the answer to a create arrives 8 s after Spark acted on it."""
    return slow_spark("/v1/submissions/create", 8)


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for svc in started:
        if svc.running():
            svc.terminate()


def test_second_process_on_one_store_waits_then_takes_over(
    service_env: dict[str, str],
    database_url: str,
    slow_create: DelayingProxy,
    job_body: JobBody,
    events: EventReader,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    env = {**service_env, "POLLER_DATABASE_URL": database_url}
    first = ServiceProcess({**env, "POLLER_SPARK_REST_URL": slow_create.url}, tmp_path / "a.log")
    processes.append(first.start())
    wait_for(lambda: first.get("/readyz").json()["role"] == "leader", 30, "the first to lead")

    answers: list[requests.Response] = []

    def submit() -> None:
        with contextlib.suppress(requests.RequestException):
            answers.append(
                first.post("/submit", json={"request_id": "in-flight", "job": job_body()})
            )

    caller = threading.Thread(target=submit)
    caller.start()
    wait_for(lambda: slow_create.holding == 1, 30, "Spark to be creating the driver")

    # A second start on the same store while Spark is still answering the first one's create ...
    second = ServiceProcess(env, tmp_path / "b.log")
    processes.append(second.start())
    ready = second.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["role"] == "standby"
    # ... and one that cannot even bind its port.
    clash = subprocess.run(
        [sys.executable, "-m", "poller", "serve"],
        env={**env, "POLLER_PORT": str(first.port)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert clash.returncode != 0
    caller.join(timeout=60)
    assert [a.status_code for a in answers] == [202], [a.text for a in answers]
    [event] = events.wait_for_keys({"in-flight"})["in-flight"]
    assert event.value["state"] == "FINISHED", event.value
    assert "resolved" not in second.logs(), second.logs()[-2000:]
    assert "standby" in second.logs()

    # The standby takes the requests recorded through it, and the store, when the leader dies.
    answer: dict[str, Any] = second.post(
        "/submit", json={"request_id": "via-standby", "job": job_body(seconds=4)}
    ).json()
    assert answer["state"] == "SUBMITTED", answer
    first.kill9()
    died_at = time.monotonic()
    wait_for(lambda: second.get("/readyz").json()["role"] == "leader", 30, "the standby to lead")
    print(f"lease: the standby led {time.monotonic() - died_at:.1f}s after the leader's kill -9")
    [event] = events.wait_for_keys({"via-standby"})["via-standby"]
    assert event.value["state"] == "FINISHED", event.value


def test_a_frozen_leader_loses_the_lease_to_a_standby(
    service_env: dict[str, str],
    postgres: Postgres,
    processes: list[ServiceProcess],
    tmp_path: Path,
) -> None:
    """SIGSTOP keeps a leader's sockets open, so its advisory lock would outlive it: the lease
    ends after POLLER_LEASE_TTL_S without a check, a standby leads, and the leader, woken,
    finds it lost and stands by."""
    env = {
        **service_env,
        "POLLER_DATABASE_URL": new_pg_database(postgres),
        "POLLER_LEASE_TTL_S": "6",
    }
    first = ServiceProcess(env, tmp_path / "a.log")
    processes.append(first.start())
    wait_for(lambda: first.get("/readyz").json()["role"] == "leader", 30, "the first to lead")
    second = ServiceProcess(env, tmp_path / "b.log")
    processes.append(second.start())
    assert second.get("/readyz").json()["role"] == "standby"

    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        wait_for(lambda: second.get("/readyz").json()["role"] == "leader", 30, "a new leader")
        took = time.monotonic() - stopped_at
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    print(f"lease: the standby led {took:.1f}s after the leader froze")
    assert took >= 5  # not before the lease's time was up
    wait_for(
        lambda: first.get("/readyz").json()["role"] == "standby", 30, "the old leader to yield"
    )
    assert "scheduler lease lost" in first.logs()
