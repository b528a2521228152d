"""Reading the tag out of a driver's launch command: only a whole argument of its own counts."""

from __future__ import annotations

from typing import cast

import pytest

from poller.errors import SparkUnavailable
from poller.finder import DriverFinder, Found, launch_tag
from poller.master_view import ClusterView, SharedView, WorkerInfo
from poller.worker_logs import LogChunk, WorkerLogs

TAG = "0f9c1c57-8a5e-4c52-9d65-2b2b6f1d3a10"
JAVA = 'Launch Command: "/usr/bin/java" "-cp" "/spark/jars/*" "-Xmx256M"'


def test_the_tag_argument_is_read() -> None:
    line = f'{JAVA} "-Dspark.app.name=nightly" "-Dspark.poller.tag={TAG}" "x.Main"'
    assert launch_tag(line) == TAG


@pytest.mark.parametrize(
    "line",
    [
        # Inside another argument: not one of its own. (Spark writes each argument between
        # quotes, unescaped: the service refuses its tag inside a job's values and arguments.)
        f'{JAVA} "-Dspark.app.name=-Dspark.poller.tag={TAG}" "x.Main"',
        # Two of them: one was smuggled in (java options become arguments of their own).
        f'{JAVA} "-Dspark.poller.tag={TAG}" "-Dspark.poller.tag=1e0b5e2c-0000-4000-8000-1"',
        # Not a launch command at all.
        f'"-Dspark.poller.tag={TAG}"',
        f"{JAVA} -Dspark.poller.tag={TAG}",
        "",
    ],
)
def test_anything_else_is_no_tag(line: str) -> None:
    assert launch_tag(line) is None


T = 1_700_000_000_000
OURS, OTHER, GONE, QUEUED = (f"driver-20231114221320-000{n}" for n in range(4))


class _View:
    def __init__(self, view: ClusterView) -> None:
        self.view = view

    def get(self, timeout_s: float | None = None) -> ClusterView:  # noqa: ARG002
        return self.view


class _Logs:
    """The first line of each driver's stderr, or a worker that does not answer."""

    def __init__(self, lines: dict[str, str]) -> None:
        self.lines = lines

    def read(self, ui_url: str, driver_id: str, *_args: object, **_kw: object) -> LogChunk:
        if "down" in ui_url:
            raise SparkUnavailable(f"worker {ui_url} did not answer")
        text = self.lines[driver_id] + "\n====\n"
        return LogChunk(text, 0, len(text), len(text))


def _find(states: dict[str, str], placed: dict[str, str]) -> Found:
    view = ClusterView(
        1.0,
        states,
        placed=placed,
        workers={"w": WorkerInfo("h", "http://h:8081"), "d": WorkerInfo("d", "http://down:8081")},
        submitted_ms=dict.fromkeys(states, T + 5_000),
    )
    lines = {driver: f'{JAVA} "-Dspark.poller.tag=t-{driver}" "x.Main"' for driver in states}
    finder = DriverFinder(cast(SharedView, _View(view)), cast(WorkerLogs, _Logs(lines)), 1.0)
    return finder.find("our-tag", T, T + 300_000)


def test_ended_drivers_that_never_can_be_read_do_not_hold_a_search_up() -> None:
    """Killed while queued, or on a worker that left: it is looked at while the search
    lasts, but its end is not put off for it."""
    found = _find(
        {OTHER: "FINISHED", QUEUED: "KILLED", GONE: "FAILED"},
        {OTHER: "w", GONE: "left"},
    )
    assert (found.read, found.waiting, found.unreadable, found.problem) == (1, 0, 0, None)
    assert (found.silent, found.gone) == (1, 1)
    assert found.driver is None


def test_an_ended_driver_on_a_worker_that_does_not_answer_holds_a_search_up() -> None:
    """A worker slow or down for now may answer the next search: it may be ours."""
    found = _find({OURS: "FINISHED"}, {OURS: "d"})
    assert (found.unreadable, found.gone) == (1, 0)
    assert found.problem is not None


def test_live_drivers_that_cannot_be_read_hold_a_search_up() -> None:
    found = _find(
        {QUEUED: "SUBMITTED", GONE: "RUNNING", OURS: "RUNNING"},
        {GONE: "left", OURS: "d"},
    )
    assert (found.waiting, found.unreadable, found.gone) == (1, 2, 0)
    assert found.problem is not None
