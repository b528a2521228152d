"""Which driver on the cluster is a request's, when the answer to its create call was lost.

Every create carries ``spark.poller.tag`` (a random UUID kept in the request's record) among its
Spark properties; they reach the driver's launch command, which the worker writes as the first
line of the driver's stderr, each argument quoted. A search lists the master's drivers submitted
while the create could have reached the master, and reads the launch command of each one that
has a worker. Drivers still waiting for a worker (or whose log cannot be read yet) are looked at
again by the next search; a driver's tag never changes, so each is read once. A search ends
without a match only once every driver of its window was read, but for ended ones that never can
be (killed while queued, or on a worker that left): those are tried while it lasts.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from poller.errors import SparkUnavailable
from poller.failure import LAUNCH_COMMAND, REDACTED
from poller.master_view import CLOCK_SKEW_S, ClusterView, SharedView, view_state
from poller.worker_logs import NoSuchLog, WorkerLogs

# The launch command is the first line of stderr; a long class path still fits in this.
HEAD_BYTES = 64 * 1024
MAX_HEAD_BYTES = 1024 * 1024
# Per search: log reads, and the time they may take (the rest wait for the next search).
READS_PER_SEARCH = 50
SEARCH_BUDGET_S = 5.0
# The whole argument Spark writes for the property: inside another argument's value it is
# preceded by an escaped quote, and never counts.
_TAG = re.compile(r'(?:^|\s)"-Dspark\.poller\.tag=([^"\s]*)"')


@dataclass
class Found:
    """What one search saw."""

    driver: str | None = None  # the driver carrying the tag, if exactly one does
    tagged: list[str] = field(default_factory=list)
    read: int = 0  # drivers of the window whose tag is known
    waiting: int = 0  # not placed on a worker yet: looked at again next time
    unreadable: int = 0  # placed, but their launch command could not be read (yet)
    redacted: int = 0  # Spark hid the tag (a spark.redaction.regex that matches it)
    silent: int = 0  # ended without a launch command to read (killed or failed before it)
    # Ended, on a worker the master no longer lists: tried by every search while it lasts, not
    # waited for past its end (its log left with the worker, and it runs no more).
    gone: int = 0
    problem: str | None = None

    @property
    def complete(self) -> bool:
        """Every driver of the window that may be the one was read."""
        return not (self.waiting or self.unreadable or self.problem)

    def summary(self) -> str:
        said = (
            f"{self.read} driver(s) of the window read, {self.waiting} waiting for a worker, "
            f"{self.unreadable} unreadable, {self.silent} ended without a launch command, "
            f"{self.gone} ended on a worker that left, "
            f"{self.redacted} with the tag redacted by Spark"
        )
        return said if self.problem is None else f"{said}; {self.problem}"


def launch_tag(first_line: str) -> str | None:
    """The tag in a driver's launch command (its stderr's first line), if it carries exactly
    one as an argument of its own; None otherwise (a second one was smuggled in, say through
    java options, or the line is not a launch command)."""
    if not first_line.startswith(LAUNCH_COMMAND):
        return None
    tags = _TAG.findall(first_line)
    return tags[0] if len(tags) == 1 else None


class NoLaunchCommand(SparkUnavailable):
    """The driver's stderr holds no (whole) launch command: not yet, or, once it ended, never."""


class WorkerGone(SparkUnavailable):
    """The master no longer lists the worker a driver ran on: its log went with it."""


class DriverFinder:
    """Finds drivers by their tag on one cluster."""

    def __init__(self, view: SharedView, logs: WorkerLogs, timeout_s: float) -> None:
        self.view = view
        self.logs = logs
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._tags: dict[str, str | None] = {}  # driver id -> its tag (None: it has none)
        self._pruned_at = 0.0  # the view the tags were last pruned to

    def find(self, tag: str, since_ms: int, until_ms: int) -> Found:
        """The driver carrying ``tag`` among those the master took between ``since_ms`` and
        ``until_ms`` (epoch ms; a margin for the clocks is added on both sides)."""
        found = Found()
        try:
            view = self.view.get()
        except SparkUnavailable as exc:
            found.problem = exc.message
            return found
        with self._lock:
            if view.taken_at != self._pruned_at:  # drivers the master forgot: never again
                self._pruned_at = view.taken_at
                self._tags = {k: v for k, v in self._tags.items() if k in view.states}
        deadline = time.monotonic() + SEARCH_BUDGET_S
        reads = 0
        margin_ms = CLOCK_SKEW_S * 1000
        for driver_id, submitted_ms in view.submitted_ms.items():
            if not since_ms - margin_ms <= submitted_ms <= until_ms + margin_ms:
                continue
            with self._lock:
                known, seen = driver_id in self._tags, self._tags.get(driver_id)
            if not known:
                ended = view_state(view.states[driver_id]).terminal
                worker_id = view.placed.get(driver_id)
                if worker_id is None:
                    if ended:
                        found.silent += 1  # ended before it ran: it never had a command
                    else:
                        found.waiting += 1
                    continue
                if reads >= READS_PER_SEARCH or time.monotonic() > deadline:
                    found.unreadable += 1
                    continue
                reads += 1
                try:
                    seen = self._read_tag(view, driver_id, worker_id, deadline)
                except (NoLaunchCommand, NoSuchLog):
                    if ended:
                        found.silent += 1  # it never will have one: it cannot tell
                    else:
                        found.unreadable += 1
                    continue
                except WorkerGone as exc:
                    if ended:  # its log left with its worker: tried again by each search
                        found.gone += 1
                    else:
                        found.unreadable += 1
                        found.problem = found.problem or exc.message
                    continue
                except SparkUnavailable as exc:  # slow or down for now: waited for
                    found.unreadable += 1
                    found.problem = found.problem or exc.message
                    continue
                with self._lock:
                    self._tags[driver_id] = seen
            found.read += 1
            if seen == tag:
                found.tagged.append(driver_id)
            elif seen == REDACTED:
                found.redacted += 1
        if len(found.tagged) == 1:
            found.driver = found.tagged[0]
        return found

    def _read_tag(
        self, view: ClusterView, driver_id: str, worker_id: str, deadline: float
    ) -> str | None:
        """The tag in the driver's launch command (None if it has none). Raises SparkUnavailable
        when the command cannot be read yet."""
        worker = view.workers.get(worker_id)
        if worker is None or worker.ui_url is None:
            raise WorkerGone(f"the master's view does not list worker {worker_id}'s web UI")
        wanted = HEAD_BYTES
        while True:
            left = min(self.timeout_s, deadline - time.monotonic())
            if left <= 0:
                raise SparkUnavailable("no time left to read launch commands")
            chunk = self.logs.read(worker.ui_url, driver_id, "stderr", wanted, left, offset=0)
            first, newline, _rest = chunk.text.partition("\n")
            if newline:
                return launch_tag(first)
            if chunk.end >= chunk.length or wanted >= MAX_HEAD_BYTES:
                raise NoLaunchCommand(f"driver {driver_id}'s launch command is not written")
            wanted = min(MAX_HEAD_BYTES, wanted * 4)
