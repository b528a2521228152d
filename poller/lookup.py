"""Why a driver ended: its log, read from the worker that ran it, within a time budget.

Spark's status says FAILED with no reason. The master's cluster view names the driver's worker
and the worker's web UI, which serves the driver's stdout (where a Python driver's traceback
goes) and stderr (the JVM's). Whatever cannot be had within the budget (a master UI that
refuses us, a worker that does not answer, a driver that never ran) is said in ``note``, and the
ending goes on without it: a reason never delays an event by more than the budget, nor loses one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from poller.apps import logged_app_id
from poller.errors import SparkUnavailable
from poller.failure import FailureInfo, Mask, extract, from_line_start, killed_reason
from poller.master_view import ClusterView, MasterView, WorkerInfo
from poller.metrics import FAILURE_LOOKUP_SECONDS
from poller.schemas import DriverState, DriverStatus, Failure, JobRecord
from poller.worker_logs import LogType, WorkerLogs

logger = logging.getLogger(__name__)

# Endings whose reason is looked for.
LOOKED_UP = frozenset({DriverState.FAILED, DriverState.ERROR, DriverState.KILLED})
# The end of each log that is read: a traceback's last lines are at its end.
READ_BYTES = 64 * 1024
# Lookups under way at once against one cluster's workers; the others wait within their budget.
CONCURRENT_PER_CLUSTER = 4
MAX_NOTE_CHARS = 512
MAX_KNOWN_WORKERS = 10_000


@dataclass(frozen=True)
class ClusterLogs:
    """What a lookup reads on one cluster: its master's view, and its workers' logs."""

    view: MasterView
    logs: WorkerLogs
    # The view polls last took (any age: where workers are changes rarely), or None.
    latest: Callable[[], ClusterView | None]


@dataclass(frozen=True)
class Looked:
    failure: Failure
    app_id: str | None  # the application the driver's log named


@dataclass(frozen=True)
class Read:
    info: FailureInfo
    app_id: str | None


class _Spent(Exception):
    """The budget ran out."""


class FailureLookup:
    """Finds the reason of a driver's ending within ``budget_s``."""

    def __init__(
        self,
        clusters: Mapping[str, ClusterLogs],
        budget_s: float,
        tail_bytes: int,
        mask: Mask | None = None,
    ) -> None:
        """``mask`` hides this service's own secrets, should a driver's log hold one."""
        self.clusters = clusters
        self.budget_s = budget_s
        self.tail_bytes = tail_bytes
        self.mask = mask
        self._slots = {
            name: threading.BoundedSemaphore(CONCURRENT_PER_CLUSTER) for name in clusters
        }
        self._workers: dict[tuple[str, str], WorkerInfo] = {}

    def lookup(self, record: JobRecord, status: DriverStatus) -> Looked:
        """The failure of ``record``'s driver, which ``status`` (just seen) shows ended."""
        started = time.monotonic()
        found, note = self._read(record, status, started + self.budget_s)
        failure = _failure(status, None if found is None else found.info, note)
        outcome = "no_log" if found is None else "reason" if found.info.reason else "no_reason"
        FAILURE_LOOKUP_SECONDS.labels(record.cluster, outcome).observe(time.monotonic() - started)
        return Looked(failure, found.app_id if found is not None else None)

    def _read(
        self, record: JobRecord, status: DriverStatus, deadline: float
    ) -> tuple[Read | None, str | None]:
        cluster = self.clusters.get(record.cluster)
        worker_id = status.worker_id or (None if record.worker is None else record.worker.id)
        if cluster is None or record.submission_id is None or self.budget_s <= 0:
            return None, None
        if worker_id is None:
            return None, "the driver never ran on a worker"
        slots = self._slots[record.cluster]
        if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return None, f"{self._spent()} (other lookups were under way)"
        try:
            ui_url = self._worker_ui(record.cluster, cluster, worker_id, deadline)
            logs: dict[LogType, str | None] = {"stdout": None, "stderr": None}
            problem = None
            for log_type in logs:  # stdout first: a Python driver's traceback is there
                try:
                    chunk = cluster.logs.read(
                        ui_url, record.submission_id, log_type, READ_BYTES, _left(deadline)
                    )
                    logs[log_type] = from_line_start(
                        chunk.text, chunk.start, stderr=log_type == "stderr"
                    )
                except SparkUnavailable as exc:
                    problem = problem or exc.message
                except _Spent:
                    problem = problem or self._spent()
            if all(text is None for text in logs.values()):
                return None, problem
            found = extract(
                logs["stdout"], logs["stderr"], tail_bytes=self.tail_bytes, mask=self.mask
            )
            return Read(found, logged_app_id(logs["stderr"])), problem
        except _Spent:
            return None, self._spent()
        except SparkUnavailable as exc:
            return None, exc.message
        finally:
            slots.release()

    def _worker_ui(self, name: str, cluster: ClusterLogs, worker_id: str, deadline: float) -> str:
        """The web UI of ``worker_id``, as the master last said (a fresh view if none did)."""
        known = self._workers.get((name, worker_id))
        if known is None:
            latest = cluster.latest()
            if latest is None or worker_id not in latest.workers:
                latest = cluster.view.fetch(timeout_s=_left(deadline))
            if len(self._workers) > MAX_KNOWN_WORKERS:  # workers come and go: forget the old
                self._workers.clear()
            for listed_id, info in latest.workers.items():
                self._workers[(name, listed_id)] = info
            known = self._workers.get((name, worker_id))
        if known is None or known.ui_url is None:
            raise SparkUnavailable(f"the master's view does not list worker {worker_id}'s web UI")
        return known.ui_url

    def _spent(self) -> str:
        return f"the driver's log could not be read within {self.budget_s:g}s"


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0.05:
        raise _Spent
    return left


def _failure(status: DriverStatus, found: FailureInfo | None, note: str | None) -> Failure:
    """The event's ``failure``: Spark's word where the log says nothing, the log's otherwise."""
    info = found or FailureInfo(None, None, None, None, None)
    reason, exception_class = info.reason, info.exception_class
    if status.state == DriverState.KILLED:
        reason, exception_class = killed_reason(), None
    elif reason is None and status.message:
        reason = status.message  # ERROR: Spark's message names the exception
    return Failure(
        reason=reason,
        exception_class=exception_class,
        frame=None if status.state == DriverState.KILLED else info.frame,
        log_tail=info.log_tail,
        log_source=info.log_source,
        note=None if note is None else note[:MAX_NOTE_CHARS],
    )
