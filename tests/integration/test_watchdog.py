"""A service whose scheduler thread is gone stops itself instead of sitting alive."""

from __future__ import annotations

import threading
from pathlib import Path

from poller.config import Settings
from poller.devstack import free_port
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
