"""Readiness checks run in the background, so a health probe never waits on a dependency.

A probe that waits on the database or the broker can take as long as they do; a liveness probe that
times out restarts the pod and interrupts every submit in flight. Each check runs on a thread of its
own every few seconds; ``/readyz`` reads the last answers, and a check that has not come back in
time is reported as not answering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Check = Callable[[], str | None]  # None when fine, else what is wrong


@dataclass
class _Result:
    problem: str | None = "not checked yet"
    at: float = 0.0


class HealthMonitor:
    """Runs each named check every ``period_s`` and keeps its latest answer."""

    def __init__(self, checks: dict[str, Check], period_s: float, stale_after_s: float) -> None:
        self.checks = checks
        self.period_s = period_s
        self.stale_after_s = stale_after_s
        self._results = {name: _Result(at=time.monotonic()) for name in checks}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in checks}
        self._answered = {name: threading.Event() for name in checks}
        self._threads = [
            threading.Thread(target=self._run, args=(name,), name=f"check-{name}", daemon=True)
            for name in checks
        ]

    def start(self, first_answer_s: float = 5.0) -> None:
        """Start checking; wait (bounded) for each check's first answer, so a service that has
        just started does not report "not checked yet"."""
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + first_answer_s
        for answered in self._answered.values():
            answered.wait(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        for wake in self._wake.values():
            wake.set()

    def _run(self, name: str) -> None:
        check = self.checks[name]
        while not self._stop.is_set():
            try:
                problem = check()
            except Exception as exc:
                problem = f"check failed: {type(exc).__name__}"
            with self._lock:
                self._results[name] = _Result(problem, time.monotonic())
            self._answered[name].set()
            self._wake[name].wait(self.period_s)
            self._wake[name].clear()

    def problems(self) -> dict[str, str]:
        """Each check's state: "ok", what is wrong, or that it has not answered lately."""
        now = time.monotonic()
        with self._lock:
            results = dict(self._results)
        answers: dict[str, str] = {}
        for name, result in results.items():
            if now - result.at > self.stale_after_s:
                answers[name] = f"not answering (no answer for {now - result.at:.0f}s)"
            else:
                answers[name] = result.problem or "ok"
        return answers
