"""The watchdog: a dead scheduler thread is fatal; a failing step is reported and retried."""

from __future__ import annotations

import threading
from pathlib import Path

from poller.config import Settings
from poller.devstack import free_port, wait_for
from poller.service import Service


def test_dead_scheduler_thread_is_fatal(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'poller.db'}",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        poll_interval_seconds=1,
    )
    service = Service(settings)
    reasons: list[str] = []
    fatal = threading.Event()

    def on_fatal(reason: str) -> None:
        reasons.append(reason)
        fatal.set()

    service.on_fatal = on_fatal
    service.start()
    try:
        assert service.healthy()
        service.scheduler.scheduler.shutdown(wait=False)  # the thread ends, as if it had crashed
        assert fatal.wait(10), "the watchdog did not notice"
        assert reasons == ["the scheduler thread died"]
        assert not service.healthy()
    finally:
        service.stop()


def test_a_lease_it_cannot_take_is_reported_and_retried(tmp_path: Path) -> None:
    """The lease file cannot be opened (here: a directory stands in its place): the watchdog
    says so in readiness and keeps trying, instead of dying and leaving a healthy-looking
    process that never polls."""
    database = tmp_path / "poller.db"
    lease_path = tmp_path / "poller.db.lease"
    lease_path.mkdir()
    settings = Settings(
        database_url=f"sqlite:///{database}",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        poll_interval_seconds=1,
    )
    service = Service(settings)
    service.start()
    try:
        service.activate()
        wait_for(
            lambda: "lease file" in service.readiness()["scheduler"],
            15,
            "the lease problem to be reported",
            describe=lambda: str(service.readiness()),
        )
        assert service.healthy()
        assert service.role == "standby"
        lease_path.rmdir()
        wait_for(lambda: service.role == "leader", 15, "the lease to be taken once it can be")
        wait_for(lambda: service.readiness()["scheduler"] == "ok", 15, "the problem to clear")
    finally:
        service.stop()
