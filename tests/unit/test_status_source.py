"""The rules by which a poll believes the cluster view, or asks the driver's REST status."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from poller.config import ClusterConfig
from poller.devstack import wait_for
from poller.errors import SparkUnavailable
from poller.master_view import ClusterView, MasterView, SharedView, parse_view
from poller.schemas import DriverState, DriverStatus
from poller.spark import SparkClient
from poller.status_source import StatusSource

MASTERS = frozenset({"m1:7077", "m2:7077"})


def view_payload(**overrides: Any) -> dict[str, Any]:
    return {
        "url": "spark://m2:7077",
        "status": "ALIVE",
        "activedrivers": [{"id": "driver-1", "state": "RUNNING", "worker": "w"}],
        "completeddrivers": [{"id": "driver-0", "state": "FAILED", "worker": "w"}],
        **overrides,
    }


def states(payload: Any, masters: frozenset[str] | None) -> dict[str, str]:
    return parse_view(payload, masters, 0.0).states


def test_a_view_lists_every_driver_of_an_alive_master_of_the_cluster() -> None:
    assert states(view_payload(), MASTERS) == {"driver-1": "RUNNING", "driver-0": "FAILED"}


def test_a_view_names_each_drivers_worker_and_where_the_worker_is() -> None:
    payload = view_payload(
        workers=[
            {"id": "w", "host": "10.0.0.7", "webuiaddress": "http://10.0.0.7:8081"},
            {"id": 5},
            "odd",
        ],
        activedrivers=[
            {"id": "driver-1", "state": "RUNNING", "worker": "w"},
            {"id": "driver-2", "state": "SUBMITTED", "worker": "None"},
            {"id": "driver-3", "state": "RUNNING", "worker": "gone"},
        ],
    )
    view = parse_view(payload, MASTERS, 0.0)
    running = view.status("driver-1")
    assert running is not None
    assert (running.state, running.worker_id, running.worker_host) == (
        DriverState.RUNNING,
        "w",
        "10.0.0.7",
    )
    assert view.workers["w"].ui_url == "http://10.0.0.7:8081"
    waiting = view.status("driver-2")
    assert waiting is not None
    assert waiting.worker_id is None
    unlisted_worker = view.status("driver-3")
    assert unlisted_worker is not None
    assert (unlisted_worker.worker_id, unlisted_worker.worker_host) == ("gone", None)
    assert view.status("driver-9") is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (view_payload(status="STANDBY"), "STANDBY, not ALIVE"),
        (view_payload(status="RECOVERING"), "RECOVERING, not ALIVE"),
        (view_payload(status=None), "not ALIVE"),
        (view_payload(url="spark://elsewhere:7077"), "not one of this cluster's masters"),
        (view_payload(url=None), "not one of this cluster's masters"),
        (view_payload(activedrivers=None), "no activedrivers list"),
        ([], "oddly"),
    ],
)
def test_a_view_that_cannot_speak_for_the_cluster_is_refused(payload: Any, reason: str) -> None:
    with pytest.raises(SparkUnavailable, match=reason):
        states(payload, MASTERS)


def test_odd_entries_are_skipped_and_long_states_bounded() -> None:
    payload = view_payload(
        activedrivers=[None, {"id": 3, "state": "RUNNING"}, {"id": "d", "state": "X" * 99}]
    )
    assert states(payload, MASTERS) == {"d": "X" * 32, "driver-0": "FAILED"}


def test_named_ui_urls_are_trusted_without_the_master_check() -> None:
    assert states(view_payload(url="spark://alias:7077"), None)["driver-1"] == "RUNNING"


class FakeClient:
    name = "default"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def status(self, submission_id: str) -> DriverStatus:
        self.asked.append(submission_id)
        return DriverStatus(found=True, state=DriverState.RUNNING, raw_state="RUNNING")


class FakeView:
    def __init__(self, states: dict[str, str]) -> None:
        self.states = states
        self.fetches = 0
        self.fail: str | None = None

    def fetch(self) -> ClusterView:
        self.fetches += 1
        if self.fail is not None:
            raise SparkUnavailable(self.fail)
        return ClusterView(time.monotonic(), dict(self.states))

    def close(self) -> None:
        pass


def source(view: FakeView, max_age_s: float = 60.0) -> tuple[StatusSource, FakeClient]:
    client = FakeClient()
    return (
        StatusSource(cast(SparkClient, client), cast(MasterView, view), max_age_s),
        client,
    )


def test_one_view_answers_for_every_driver_once() -> None:
    view = FakeView({f"d{n}": "RUNNING" for n in range(100)})
    statuses, client = source(view)
    for n in range(100):
        assert statuses.status(f"d{n}").state == DriverState.RUNNING
    assert (view.fetches, client.asked) == (1, [])
    # A driver's next poll needs a view taken after its last answer: one more fetch.
    statuses.status("d0")
    assert view.fetches == 2


def test_drivers_missing_from_the_view_or_in_error_ask_rest() -> None:
    view = FakeView({"err": "ERROR", "ok": "FINISHED"})
    statuses, client = source(view)
    assert statuses.status("ok").state == DriverState.FINISHED
    statuses.status("new")
    statuses.status("err")  # Spark's message for ERROR comes only with the REST answer
    assert client.asked == ["new", "err"]


def test_a_view_older_than_a_rest_answer_is_not_used_for_that_driver() -> None:
    view = FakeView({"d": "SUBMITTED", "x": "RUNNING"})
    statuses, client = source(view)
    statuses.status("x")  # the first view
    statuses.status("d", direct=True)  # a REST answer after it
    statuses.status("d")  # the first view is older than that answer: a new one is fetched
    assert view.fetches == 2
    assert client.asked == ["d"]


def test_an_unusable_view_falls_back_and_is_retried_after_max_age() -> None:
    view = FakeView({"d": "RUNNING"})
    view.fail = "the master's /json/ says it is STANDBY, not ALIVE"
    statuses, client = source(view, max_age_s=0.2)
    statuses.status("d")
    statuses.status("e")
    assert (view.fetches, client.asked) == (1, ["d", "e"])  # not retried at every poll
    view.fail = None
    time.sleep(0.25)
    assert statuses.status("d").state == DriverState.RUNNING
    assert view.fetches == 2
    assert client.asked == ["d", "e"]


def test_an_old_view_is_refreshed() -> None:
    view = FakeView({"d": "RUNNING"})
    statuses, _ = source(view, max_age_s=0.1)
    statuses.status("d")
    time.sleep(0.15)
    statuses.status("e")
    assert view.fetches == 2


def test_an_ageing_view_is_refreshed_behind_the_polls_using_it() -> None:
    """Near max_age the view still answers at once while one refresh runs on its own thread."""
    view = FakeView({"d": "RUNNING", **{f"e{n}": "RUNNING" for n in range(5)}})
    release = threading.Event()
    fetch = view.fetch
    asked = [0]

    def slow_fetch() -> ClusterView:
        asked[0] += 1
        if asked[0] > 1:
            release.wait(10)
        return fetch()

    view.fetch = slow_fetch  # type: ignore[method-assign]
    statuses, client = source(view, max_age_s=1.0)
    statuses.status("d", request_id="r")
    first = statuses._current
    time.sleep(0.8)  # past REFRESH_AHEAD of max_age, within it
    for n in range(5):  # answered from the current view while the refresh waits on the master
        assert statuses.status(f"e{n}").state == DriverState.RUNNING
    assert asked[0] == 2  # one refresh in flight, not one per poll
    assert statuses._current is first
    view.states["d"] = "FINISHED"
    release.set()
    deadline = time.monotonic() + 5
    while statuses._current is first and time.monotonic() < deadline:
        time.sleep(0.01)
    assert statuses._current is not first
    assert statuses.status("d").state == DriverState.FINISHED
    assert client.asked == []


def test_ui_urls_default_to_each_rest_host_on_the_default_ui_port() -> None:
    cluster = ClusterConfig(
        rest_url="http://m1:6066,https://[::1]:6066", master_url="spark://m1:7077,m2:7077"
    )
    assert cluster.ui_bases == ("http://m1:8080", "https://[::1]:8080")
    named = ClusterConfig(
        rest_url="http://m1:6066", master_url="spark://m1:7077", ui_url="http://ui:9090/"
    )
    assert named.ui_bases == ("http://ui:9090",)
    with pytest.raises(ValueError, match="one web UI URL per REST URL"):
        ClusterConfig(
            rest_url="http://m1:6066", master_url="spark://m1:7077", ui_url="http://a,http://b"
        )


def test_a_refresh_wakes_the_polls_of_drivers_it_shows_ended() -> None:
    view = FakeView({"d1": "RUNNING", "d2": "RUNNING", "d3": "RUNNING"})
    woken: list[list[str]] = []
    statuses = StatusSource(
        cast(SparkClient, FakeClient()), cast(MasterView, view), 60.0, wake=woken.append
    )
    for n in (1, 2, 3):
        statuses.status(f"d{n}", request_id=f"r{n}")
    view.states.update(d1="FINISHED", d2="RUNNING")
    del view.states["d3"]  # gone from the master's memory: its poll asks REST now
    statuses.status("d2", request_id="r2")  # needs a newer view: the refresh
    assert woken == [["r1", "r3"]]
    view.states["d2"] = "KILLED"
    statuses.status("d1", request_id="r1")  # the woken poll: FINISHED, from the view
    statuses.status("d2", request_id="r2")
    assert woken == [["r1", "r3"], ["r2"]]


def test_a_failed_refresh_ahead_keeps_the_view_until_it_is_too_old() -> None:
    view = FakeView({f"d{n}": "RUNNING" for n in range(4)})
    statuses, client = source(view, max_age_s=0.5)
    statuses.status("d0")
    view.fail = "the master's /json/ is unreachable: ConnectionError"
    time.sleep(0.4)  # ageing: a refresh ahead starts, and fails
    assert statuses.status("d1").state == DriverState.RUNNING
    deadline = time.monotonic() + 5
    while (view.fetches < 2 or statuses._refresh.locked()) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the refresh ahead has failed and let go
    assert statuses.status("d2").state == DriverState.RUNNING  # still the view
    assert view.fetches == 2  # one try ahead per view, not one per poll
    assert client.asked == []
    time.sleep(0.15)  # too old now: the poll's own refresh fails, and REST answers
    statuses.status("d3")
    assert client.asked == ["d3"]


def test_a_refresh_ahead_that_cannot_start_leaves_nobody_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    view = FakeView({f"d{n}": "RUNNING" for n in range(3)})
    statuses, _ = source(view, max_age_s=0.3)
    statuses.status("d0")
    time.sleep(0.25)

    def refuse(_self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError):
            statuses.status("d1")
    time.sleep(0.1)  # too old: a poll refreshes it itself, and must get the lock
    done = threading.Event()

    def poll() -> None:
        statuses.status("d2")
        done.set()

    threading.Thread(target=poll, daemon=True).start()
    assert done.wait(5)


def test_an_adoption_leaves_the_wake_of_the_poll_tracking_its_driver() -> None:
    view = FakeView({"d": "RUNNING"})
    woken: list[list[str]] = []
    statuses = StatusSource(
        cast(SparkClient, FakeClient()), cast(MasterView, view), 60.0, wake=woken.append
    )
    statuses.status("d", request_id="r1")  # the poll of the request tracking it
    statuses.status("d")  # someone tries to adopt it (refused later as taken): a newer view
    view.states["d"] = "FINISHED"
    statuses.status("d")  # again: the view that shows it ended wakes the tracking poll
    assert woken == [["r1"]]


def test_control_characters_in_a_view_never_reach_the_store() -> None:
    payload = view_payload(
        activedrivers=[{"id": "driver-\x001", "state": "RUN\x00NING", "worker": "w\x00"}],
        workers=[{"id": "w\x00", "host": "h\x00", "webuiaddress": "http://h:8081"}],
        activeapps=[{"id": "app-\x00", "name": "n\x00", "starttime": 1}],
    )
    view = parse_view(payload, MASTERS, 0.0, times=True)
    texts = [
        *view.states,
        *view.states.values(),
        *view.placed.values(),
        *view.workers,
        *(info.host or "" for info in view.workers.values()),
        *(app.id for app in view.apps),
        *(app.name for app in view.apps),
    ]
    assert len(texts) == 10
    assert not any("\x00" in text for text in texts), texts


class _SlowView:
    """A master whose /json/ takes ``seconds`` to answer; counts the fetches."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fetches = 0

    def fetch(self, timeout_s: float | None = None, times: bool = False) -> ClusterView:  # noqa: ARG002
        self.fetches += 1
        time.sleep(self.seconds)
        return ClusterView(time.monotonic() - self.seconds, {"driver-1": "RUNNING"})


def test_callers_of_a_shared_view_at_one_moment_share_one_fetch() -> None:
    """A fetch slower than the reuse time still answers every caller that waited on it."""
    master = _SlowView(1.2)
    shared = SharedView(cast(MasterView, master), timeout_s=10.0, reuse_s=1.0)
    with ThreadPoolExecutor(4) as pool:
        views = list(pool.map(lambda _: shared.get(), range(4)))
    assert master.fetches == 1
    assert all(view is views[0] for view in views)


def test_a_caller_of_a_shared_view_waits_no_longer_than_it_asked() -> None:
    master = _SlowView(1.0)
    shared = SharedView(cast(MasterView, master), timeout_s=10.0)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(shared.get)
        wait_for(lambda: master.fetches == 1, 5, "the first fetch")
        started = time.monotonic()
        with pytest.raises(SparkUnavailable):
            shared.get(0.2)
        assert time.monotonic() - started < 0.8
        first.result()
