"""The master's whole-cluster view: its web UI's ``/json/`` lists every driver and its state.

One request there answers for every driver of the cluster, where the REST status call answers
for one. The view is trusted only from an ALIVE master, and, unless the operator named the web UI
URLs, only from a master that names itself as one of the cluster's (so a guessed URL that reaches
another master can never speak for our drivers).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from poller.bounded_http import bounded_session, get_bounded
from poller.config import ClusterConfig
from poller.errors import SparkUnavailable
from poller.metrics import SPARK_CALL_ERRORS, SPARK_CALL_SECONDS
from poller.schemas import DriverState, DriverStatus
from poller.spark import MAX_HOST_CHARS, MAX_STATE_CHARS, MAX_WORKER_ID_CHARS, jws_token
from poller.text import printable

# 50,000 drivers take about 10 MB: room for many more, not for an endless answer.
MAX_VIEW_BYTES = 128 * 1024 * 1024
MAX_URL_CHARS = 1024
MAX_APP_ID_CHARS = 128
# How far the master's clock (its drivers' and applications' start times) may be from ours.
CLOCK_SKEW_S = 60.0
# How long a shared view's failed fetch answers for it (the master is not asked again).
SHARED_VIEW_RETRY_S = 5.0
MAX_NAME_CHARS = 1024
MAX_DRIVER_ID_CHARS = 128


@dataclass(frozen=True)
class WorkerInfo:
    host: str | None
    ui_url: str | None  # the worker's web UI, which serves its drivers' logs


@dataclass(frozen=True)
class AppInfo:
    """An application the master lists (running or completed)."""

    id: str
    name: str
    start_ms: int  # epoch ms


@dataclass(frozen=True)
class ClusterView:
    """Every driver's raw state, as one master saw them at ``taken_at`` (monotonic; when the
    request was sent, so nothing in it is older than that), with the worker each driver was
    placed on (``placed``: driver id -> worker id) and what the master says of its workers."""

    taken_at: float
    states: dict[str, str]
    placed: dict[str, str] = field(default_factory=dict)
    workers: dict[str, WorkerInfo] = field(default_factory=dict)
    # When the master took each driver (epoch ms), and its applications, in a view fetched
    # ``times=True``; and the web UI it came from.
    submitted_ms: dict[str, int] = field(default_factory=dict)
    apps: tuple[AppInfo, ...] = ()
    ui_base: str | None = None

    def status(self, submission_id: str) -> DriverStatus | None:
        """The driver's status as this view shows it; None if the view does not list it."""
        raw = self.states.get(submission_id)
        if raw is None:
            return None
        worker_id = self.placed.get(submission_id)
        worker = None if worker_id is None else self.workers.get(worker_id)
        return DriverStatus(
            found=True,
            state=view_state(raw),
            raw_state=raw,
            worker_id=worker_id,
            worker_host=None if worker is None else worker.host,
        )


def view_state(raw: str) -> DriverState:
    try:
        return DriverState(raw)
    except ValueError:
        return DriverState.UNKNOWN


def parse_view(
    payload: object, masters: frozenset[str] | None, taken_at: float, times: bool = False
) -> ClusterView:
    """Read a ``/json/`` answer; raises SparkUnavailable when it cannot speak for the cluster.

    ``masters`` (host:port) are the masters it must come from; None trusts any. ``times``
    reads when each driver was submitted too (only a search needs it)."""
    if not isinstance(payload, dict):
        raise SparkUnavailable("the master's /json/ answered oddly")
    status = payload.get("status")
    if status != "ALIVE":
        raise SparkUnavailable(f"the master's /json/ says it is {str(status)[:32]}, not ALIVE")
    if masters is not None:
        url = payload.get("url")
        address = url.removeprefix("spark://") if isinstance(url, str) else None
        if address not in masters:
            raise SparkUnavailable(
                "the web UI answering is not one of this cluster's masters (its /json/ names "
                "another); set the cluster's web UI URL"
            )
    workers = _workers(payload.get("workers"))
    states: dict[str, str] = {}
    placed: dict[str, str] = {}
    submitted_ms: dict[str, int] = {}
    for key in ("activedrivers", "completeddrivers"):
        drivers = payload.get(key)
        if not isinstance(drivers, list):
            raise SparkUnavailable(f"the master's /json/ has no {key} list")
        for driver in drivers:
            if not isinstance(driver, dict):
                continue
            driver_id, state = driver.get("id"), driver.get("state")
            if isinstance(driver_id, str) and isinstance(state, str):
                driver_id = printable(driver_id, MAX_DRIVER_ID_CHARS)
                states[driver_id] = printable(state, MAX_STATE_CHARS)
                worker = driver.get("worker")
                if isinstance(worker, str) and worker != "None":
                    placed[driver_id] = printable(worker, MAX_WORKER_ID_CHARS)
                if times:
                    start = _epoch_ms(driver.get("starttime"))
                    if start is not None:
                        submitted_ms[driver_id] = start
    apps = _apps(payload) if times else ()
    return ClusterView(taken_at, states, placed, workers, submitted_ms, apps)


def _apps(payload: dict[str, Any]) -> tuple[AppInfo, ...]:
    apps: list[AppInfo] = []
    for key in ("activeapps", "completedapps"):
        listed = payload.get(key)
        for app in listed if isinstance(listed, list) else ():
            if not isinstance(app, dict):
                continue
            app_id, name, start = app.get("id"), app.get("name"), _epoch_ms(app.get("starttime"))
            if isinstance(app_id, str) and isinstance(name, str) and start is not None:
                apps.append(
                    AppInfo(
                        printable(app_id, MAX_APP_ID_CHARS), printable(name, MAX_NAME_CHARS), start
                    )
                )
    return tuple(apps)


def _epoch_ms(value: object) -> int | None:
    """Spark writes a driver's start time as a string of epoch milliseconds."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _workers(listed: object) -> dict[str, WorkerInfo]:
    workers: dict[str, WorkerInfo] = {}
    for worker in listed if isinstance(listed, list) else ():
        if isinstance(worker, dict) and isinstance(worker.get("id"), str):
            host, ui_url = worker.get("host"), worker.get("webuiaddress")
            workers[printable(worker["id"], MAX_WORKER_ID_CHARS)] = WorkerInfo(
                printable(host, MAX_HOST_CHARS) if isinstance(host, str) else None,
                printable(ui_url, MAX_URL_CHARS) if isinstance(ui_url, str) else None,
            )
    return workers


class MasterView:
    """Fetches one cluster's view from the web UI of the master that answers as ALIVE."""

    def __init__(
        self,
        name: str,
        cluster: ClusterConfig,
        timeout_s: float,
        alive_master: Callable[[], int] = lambda: 0,
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.timeout_s = timeout_s
        self.alive_master = alive_master
        self.bases = cluster.ui_bases
        self.masters = None if cluster.ui_url is not None else cluster.master_addresses
        self._session = bounded_session()

    def close(self) -> None:
        self._session.close()

    def fetch(self, timeout_s: float | None = None, times: bool = False) -> ClusterView:
        """The view of the first master (from the last ALIVE one) whose view is usable; each
        master's answer within ``timeout_s`` (the cluster's Spark timeout if None); ``times``
        as :func:`parse_view`'s."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        failures: list[str] = []
        try:
            first = self.alive_master()
            for step in range(len(self.bases)):
                base = self.bases[(first + step) % len(self.bases)]
                taken_at = time.monotonic()
                try:
                    payload = self._get(base, timeout_s)
                    view = parse_view(payload, self.masters, taken_at, times)
                    return replace(view, ui_base=base)
                except SparkUnavailable as exc:
                    failures.append(exc.message)
        finally:
            SPARK_CALL_SECONDS.labels(self.name, "view").observe(time.monotonic() - started)
        SPARK_CALL_ERRORS.labels(self.name, "view", "unavailable").inc()
        raise SparkUnavailable(
            f"no usable cluster view of Spark cluster {self.name!r}: {'; '.join(failures)}"
        )

    def _get(self, base: str, timeout_s: float) -> Any:
        headers = {}
        if self.cluster.jws_secret is not None:
            headers["Authorization"] = f"Bearer {jws_token(self.cluster.jws_secret)}"
        body = get_bounded(
            self._session,
            f"{base}/json/",
            what="the master's /json/",
            headers=headers,
            timeout_s=timeout_s,
            max_bytes=MAX_VIEW_BYTES,
            total_s=2 * timeout_s,  # a trickle ends too
        )
        try:
            return json.loads(body)
        except ValueError as exc:
            raise SparkUnavailable("the master's /json/ answered with non-JSON") from exc


class SharedView:
    """One cluster's view with every driver's submission time and the applications, at most
    ``reuse_s`` old, for those that need them now and then (searches, application links):
    callers at one moment share one fetch (those that asked while it ran take its result, or
    its failure, however long it took), and a failed fetch is not repeated for ``retry_s``."""

    def __init__(
        self,
        view: MasterView,
        timeout_s: float,
        reuse_s: float = 1.0,
        retry_s: float = SHARED_VIEW_RETRY_S,
    ) -> None:
        self.view = view
        self.timeout_s = timeout_s
        self.reuse_s = reuse_s
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._fresh: ClusterView | None = None
        self._fetched_at = 0.0  # when the last fetch that worked ended
        self._failed: tuple[float, str] | None = None  # when a fetch last failed, and why

    def get(self, timeout_s: float | None = None) -> ClusterView:
        """Raises SparkUnavailable when no view can be had within ``timeout_s`` (at most the
        cluster's Spark timeout)."""
        asked = time.monotonic()
        wait = self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s)
        if not self._lock.acquire(timeout=max(0.0, wait)):
            raise SparkUnavailable(f"the master's view was not fetched within {wait:g}s")
        try:
            now = time.monotonic()
            fresh, failed = self._fresh, self._failed
            if fresh is not None and (
                self._fetched_at >= asked or now - self._fetched_at <= self.reuse_s
            ):
                return fresh
            if failed is not None and (failed[0] >= asked or now - failed[0] < self.retry_s):
                raise SparkUnavailable(failed[1])
            left = wait - (now - asked)
            if left <= 0:
                raise SparkUnavailable(f"the master's view was not fetched within {wait:g}s")
            try:
                fresh = self.view.fetch(timeout_s=left, times=True)
            except SparkUnavailable as exc:
                self._failed = (time.monotonic(), exc.message)
                raise
            self._fresh, self._fetched_at, self._failed = fresh, time.monotonic(), None
            return fresh
        finally:
            self._lock.release()
