"""The poll job: one run for one request_id. Imports no web framework and no scheduler.

A run is a small state machine driven by the request's record, so a crash at any point is repaired
by the next run: SUBMITTING with a search (a create whose answer was lost) looks for its driver on
the cluster by its tag, and tracks it once found; POLLING (and CANCELLING, a kill awaiting Spark's
confirmation) asks Spark and, on
an ending, fixes the outcome in the database (PUBLISHING); PUBLISHING offers the record to the
outbox, which publishes the event (built from the record, hence identical on every retry) and, on
Kafka's ack, marks the request DONE and removes the job; DONE removes the job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from poller.apps import AppLinker
from poller.errors import (
    DriverTaken,
    LeaseLost,
    PollerError,
    SparkError,
    SparkUnavailable,
    StoreUnavailable,
    UnknownCluster,
)
from poller.finder import DriverFinder, Found
from poller.logs import add_log_context, current_log_context, log_scope
from poller.lookup import LOOKED_UP, FailureLookup
from poller.metrics import POLL_ERRORS, POLLS
from poller.outbox import Outbox
from poller.schemas import (
    DriverState,
    DriverStatus,
    EndDetails,
    Failure,
    Fence,
    JobRecord,
    Phase,
    SparkApp,
)
from poller.spark import SparkClient
from poller.status_source import StatusSource
from poller.store import RequestStore, utcnow

logger = logging.getLogger(__name__)

ASKING_SPARK = (Phase.POLLING, Phase.CANCELLING)
# Past its search's end, a request waits this much longer while drivers of its window wait for
# a worker (one of them may be its own).
MAX_WAIT_FOR_WORKER = timedelta(days=1)

RemoveJob = Callable[[str], None]
# The fence of a request's shard while this process leads it and knows so, else None.
CurrentFence = Callable[[str], Fence | None]


def _epoch_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _run_cluster() -> str:
    """The cluster of the request this run is about, once its record was read ("" before)."""
    return current_log_context().get("cluster", "")


def error_cause(exc: Exception) -> str:
    """The bounded ``cause`` label of a failed poll."""
    if isinstance(exc, SparkUnavailable):
        return "spark_unavailable"
    if isinstance(exc, SparkError):
        return "spark_error"
    if isinstance(exc, StoreUnavailable):
        return "database"
    return "other"


@dataclass(frozen=True)
class PollPolicy:
    """When the service stops waiting for a driver."""

    lost_after_unknown_polls: int = 10
    max_submitted_s: float | None = None
    max_tracking_s: float | None = None
    kill_on_timeout: bool = False
    kill_confirm_timeout_s: float = 60.0
    # At most how long after Spark's ending a poll sees it (the event says so).
    detection_bound_s: float | None = None
    # How long after a request was recorded its create can reach the master (a submit call's
    # longest): the window a lost create's driver is looked for in.
    create_window_s: float = 300.0


class RequestLocks:
    """One lock per request id, alive while someone holds or awaits it: a slow step of one
    request (a kill, a status call) never delays another."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, request_id: str) -> Iterator[None]:
        lock = self._enter(request_id)
        try:
            with lock:
                yield
        finally:
            self._leave(request_id)

    @contextmanager
    def hold_if_free(self, request_id: str) -> Iterator[bool]:
        """Hold the request's lock if nobody does; yields whether it is held."""
        lock = self._enter(request_id)
        try:
            held = lock.acquire(blocking=False)
            try:
                yield held
            finally:
                if held:
                    lock.release()
        finally:
            self._leave(request_id)

    def _enter(self, request_id: str) -> threading.Lock:
        with self._guard:
            lock, users = self._locks.get(request_id, (threading.Lock(), 0))
            self._locks[request_id] = (lock, users + 1)
            return lock

    def _leave(self, request_id: str) -> None:
        with self._guard:
            lock, users = self._locks[request_id]
            if users == 1:
                del self._locks[request_id]
            else:
                self._locks[request_id] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)


class Poller:
    """Everything one poll run needs; the scheduler reaches it through :func:`run_poll`."""

    def __init__(
        self,
        store: RequestStore,
        clusters: Mapping[str, SparkClient],
        sources: Mapping[str, StatusSource],
        outbox: Outbox,
        remove_job: RemoveJob,
        policy: PollPolicy | None = None,
        fence: CurrentFence | None = None,
        lookup: FailureLookup | None = None,
        finders: Mapping[str, DriverFinder] | None = None,
        linkers: Mapping[str, AppLinker] | None = None,
    ) -> None:
        """``fence`` gives the lease this process's scheduled runs decide under (None: they
        decide unfenced, as in a process that is alone by construction)."""
        self.store = store
        self.clusters = clusters
        self.sources = sources
        self.outbox = outbox
        self.remove_job = remove_job
        self.policy = policy or PollPolicy()
        self.current_fence = fence
        self.lookup = lookup
        self.finders = finders or {}
        self.linkers = linkers or {}
        self.locks = RequestLocks()

    def lock_for(self, request_id: str) -> contextlib.AbstractContextManager[None]:
        """Serialises the poll job and a cancel of the same request within this process."""
        return self.locks.hold(request_id)

    @log_scope
    def poll(self, request_id: str) -> None:
        """One scheduled run. Never raises: a failure leaves the job for the next run.

        A run that finds its request busy (a cancel is killing the driver) skips: the cancel
        does the work, and no poll thread waits on another's Spark call. So does a run of a
        process that no longer knows itself the leader (the lease lost, or a freeze longer than
        the lease): it asks Spark nothing and decides nothing."""
        add_log_context(request_id=request_id)
        try:
            fence = None
            if self.current_fence is not None:
                fence = self.current_fence(request_id)
                if fence is None:
                    POLLS.labels("", "skipped").inc()
                    return
            with self.locks.hold_if_free(request_id) as free:
                if free:
                    self.advance(request_id, fence)
                else:
                    POLLS.labels("", "skipped").inc()
        except PollerError as exc:
            if not isinstance(exc, SparkError):  # Spark's are counted where they happen
                POLL_ERRORS.labels(_run_cluster(), error_cause(exc)).inc()
            logger.warning(
                "poll of %s failed, retrying next run: %s",
                request_id,
                exc.message,
                extra={"request_id": request_id},
            )
        except Exception:
            POLL_ERRORS.labels(_run_cluster(), "other").inc()
            logger.exception(
                "poll of %s failed unexpectedly, retrying next run",
                request_id,
                extra={"request_id": request_id},
            )

    def advance(self, request_id: str, fence: Fence | None = None) -> JobRecord | None:
        """Take the request as far as it can go now. Caller holds :meth:`lock_for`.

        A scheduled run passes the leader's ``fence``: its ending lands only while the lease
        was not taken since, and its event is offered only while this process still leads."""
        record = self.store.get(request_id)
        if record is None:
            logger.warning("poll job %s has no request record; removing it", request_id)
            self.remove_job(request_id)
            return None
        add_log_context(submission_id=record.submission_id, cluster=record.cluster)
        if record.phase == Phase.SUBMITTING and record.search_until is not None:
            record = self._search(record, fence)
        if record.phase in ASKING_SPARK:
            record = self._check_spark(record, fence)
        if record.phase == Phase.PUBLISHING:
            self._still_leading(record.request_id, fence)
            self.outbox.offer(record)
        if record.phase == Phase.DONE:
            self.remove_job(request_id)
        return record

    def _still_leading(self, request_id: str, fence: Fence | None) -> None:
        """Raise LeaseLost unless ``fence`` is None (not a scheduled run) or still current."""
        current = self.current_fence
        if fence is not None and current is not None and current(request_id) != fence:
            raise LeaseLost("this process no longer holds the scheduler lease")

    def _check_spark(self, record: JobRecord, fence: Fence | None) -> JobRecord:
        assert record.submission_id is not None
        source = self.sources.get(record.cluster)
        if source is None:  # recorded by a process configured otherwise (a rolling update)
            raise UnknownCluster(f"cluster {record.cluster!r} is not configured in this process")
        self._still_leading(record.request_id, fence)  # the lease may be gone since
        try:
            # A kill is confirmed by Spark's answer now, not by the next cluster view.
            status = source.status(
                record.submission_id,
                direct=record.phase == Phase.CANCELLING,
                request_id=record.request_id,
            )
        except SparkError as exc:
            POLL_ERRORS.labels(record.cluster, error_cause(exc)).inc()
            # The kill's deadline holds whether or not Spark answers.
            if record.phase == Phase.CANCELLING and self._kill_unconfirmed(record, utcnow()):
                return self._kill_deadline_passed(record, fence)
            raise
        ended = status.found and status.state is not None and status.state.terminal
        outcome = "ended" if ended else "running" if status.found else "unknown"
        POLLS.labels(record.cluster, outcome).inc()
        if ended:  # one write: the poll, Spark's state and the outcome
            assert status.state is not None
            if record.phase == Phase.CANCELLING:
                return self._fix(
                    record,
                    DriverState.CANCELLED,
                    f"{record.message}; driver ended {status.state.value}",
                    fence,
                    status,
                )
            seen_at = utcnow()
            failure, app = self._why(record, status, fence, seen_at)
            return self._fix(
                record, status.state, status.message, fence, status, failure, seen_at, app
            )
        record = self.store.record_poll(record, status) or self._reload(record.request_id)
        if not status.found:
            if record.phase == Phase.CANCELLING:  # killed and gone (or forgotten): cancelled
                return self._fix(
                    record,
                    DriverState.CANCELLED,
                    f"{record.message}; Spark no longer knows it",
                    fence,
                )
            if record.unknown_polls >= self.policy.lost_after_unknown_polls:
                return self._fix(
                    record,
                    DriverState.LOST,
                    (
                        f"Spark has not known driver {record.submission_id} for "
                        f"{record.unknown_polls} polls in a row (master restarted without "
                        "recovery, or the driver was evicted)"
                    ),
                    fence,
                )
            logger.info(
                "Spark does not know driver %s of %s (%d in a row)",
                record.submission_id,
                record.request_id,
                record.unknown_polls,
                extra={"request_id": record.request_id},
            )
            return record
        now = utcnow()
        if record.phase == Phase.CANCELLING:
            if self._kill_unconfirmed(record, now):
                return self._kill_deadline_passed(record, fence)
            return record
        reason = self._overdue(record, now)
        if reason is not None:
            if self.policy.kill_on_timeout:
                record = self._reload(record.request_id)  # never kill what was cancelled meanwhile
                if record.phase != Phase.POLLING:
                    return record
                reason += self._kill(record, fence)
            return self._fix(record, DriverState.TIMED_OUT, reason, fence)
        return record

    def _search(self, record: JobRecord, fence: Fence | None) -> JobRecord:
        """Look for the driver of a create whose answer was lost (by its tag); adopt it once
        found. Past the search's end, with nothing found, the request ends SUBMIT_UNKNOWN; but
        never while a driver of its window still waits for a worker (it may be ours)."""
        assert record.search_until is not None
        finder = self.finders.get(record.cluster)
        asked = record.message or "the create call was interrupted"
        if finder is None:  # recorded by a process configured otherwise, or a retired cluster
            if utcnow() < record.search_until:
                raise UnknownCluster(
                    f"cluster {record.cluster!r} is not configured in this process"
                )
            why = f"cluster {record.cluster!r} is not configured here to look for its driver"
            return self._fix(record, DriverState.SUBMIT_UNKNOWN, f"{asked}; {why}", fence)
        self._still_leading(record.request_id, fence)
        if record.spark_tag is None:  # a create of a release that did not tag them
            why = "its create carried no tag to find the driver by; it was not submitted again"
            return self._fix(record, DriverState.SUBMIT_UNKNOWN, f"{asked}; {why}", fence)
        found = self._find(finder, record.spark_tag, record.submitted_at)
        if found.driver is not None:
            return self._adopt_found(record, found.driver, fence)
        now = utcnow()
        # Not while it could not look everywhere: the driver may be one it could not see.
        give_up = now >= record.search_until and (
            found.complete or now >= record.search_until + MAX_WAIT_FOR_WORKER
        )
        if found.tagged:  # more than one: never pick
            why = f"drivers {', '.join(sorted(found.tagged))} all carry this request's tag"
        elif give_up:
            why = (
                f"no driver on the cluster carries this request's tag ({found.summary()}); "
                "it was not submitted again"
            )
        else:
            logger.info(
                "looking for the driver of %s: %s",
                record.request_id,
                found.summary(),
                extra={"request_id": record.request_id},
            )
            return record
        return self._fix(record, DriverState.SUBMIT_UNKNOWN, f"{asked}; {why}", fence)

    def search_now(self, record: JobRecord) -> tuple[JobRecord, Found | None]:
        """One search for the driver of ``record`` (whose create's answer was lost), tracking
        it if found: a cancel that kills needs it now, not at the next search. None: it cannot
        be looked for here."""
        finder = self.finders.get(record.cluster)
        if finder is None or record.spark_tag is None or record.search_until is None:
            return record, None
        found = self._find(finder, record.spark_tag, record.submitted_at)
        if found.driver is None:
            return record, found
        return self._adopt_found(record, found.driver, None), found

    def _find(self, finder: DriverFinder, tag: str, submitted_at: datetime) -> Found:
        # The master took the create, if at all, while the call could last.
        until = submitted_at + timedelta(seconds=self.policy.create_window_s)
        return finder.find(tag, _epoch_ms(submitted_at), _epoch_ms(until))

    def _adopt_found(self, record: JobRecord, driver: str, fence: Fence | None) -> JobRecord:
        """Track the driver found. Unfenced, as a submit's own write is: whoever writes it,
        it is the one driver carrying this request's tag."""
        self._still_leading(record.request_id, fence)
        asked = record.message or "the create call was interrupted"
        try:
            moved = self.store.mark_submitted(
                record.request_id,
                driver,
                DriverState.UNKNOWN,
                withdraw=False,
                message=f"{asked}; driver {driver} was found by its tag and tracked",
            )
        except DriverTaken as exc:
            return self._fix(record, DriverState.SUBMIT_UNKNOWN, f"{asked}; {exc.message}", fence)
        if moved is None:
            return self._reload(record.request_id)
        logger.warning(
            "found driver %s of %s, whose create call's answer was lost: tracking it",
            driver,
            record.request_id,
            extra={"request_id": record.request_id, "submission_id": driver},
        )
        add_log_context(submission_id=driver)
        return moved

    def _why(
        self, record: JobRecord, status: DriverStatus, fence: Fence | None, seen_at: datetime
    ) -> tuple[Failure | None, SparkApp | None]:
        """Why the driver failed, and which application it ran, looked up within the lookup's
        budget before the ending is fixed: they land with it, or (a crash, a lost lease
        meanwhile) nothing does, and the next run looks again."""
        if self.lookup is None:
            return None, None
        self._still_leading(record.request_id, fence)  # nothing read for a lease lost
        started = time.monotonic()
        looked = self.lookup.lookup(record, status) if status.state in LOOKED_UP else None
        linker = self.linkers.get(record.cluster)
        if linker is None:
            return None if looked is None else looked.failure, None
        app = linker.link(
            record,
            seen_at,
            None if looked is None else looked.app_id,
            max(0.1, self.lookup.budget_s - (time.monotonic() - started)),
        )
        return None if looked is None else looked.failure, app

    def _kill_unconfirmed(self, record: JobRecord, now: datetime) -> bool:
        requested = record.cancel_requested_at or now
        return (now - requested).total_seconds() > self.policy.kill_confirm_timeout_s

    def _kill_deadline_passed(self, record: JobRecord, fence: Fence | None) -> JobRecord:
        return self._fix(
            record,
            DriverState.CANCELLED,
            (
                f"{record.message}; Spark did not confirm the kill within "
                f"{self.policy.kill_confirm_timeout_s:g}s"
            ),
            fence,
        )

    def _overdue(self, record: JobRecord, now: datetime) -> str | None:
        age_s = (now - record.submitted_at).total_seconds()
        policy = self.policy
        if (
            policy.max_submitted_s is not None
            and record.state == DriverState.SUBMITTED
            and age_s > policy.max_submitted_s
        ):
            return f"still SUBMITTED after {policy.max_submitted_s:g}s (no worker had room)"
        if policy.max_tracking_s is not None and age_s > policy.max_tracking_s:
            return f"still {record.state.value} after {policy.max_tracking_s:g}s of tracking"
        return None

    def _kill(self, record: JobRecord, fence: Fence | None) -> str:
        """Kill an overdue driver: only a leader whose lease nobody has taken since (asked of
        the database just before), so two processes never both kill it."""
        assert record.submission_id is not None
        self._still_leading(record.request_id, fence)
        if fence is not None and not self.store.fence_holds(fence):
            raise LeaseLost("the scheduler lease was taken by another process")
        try:
            accepted, _ = self.clusters[record.cluster].kill(record.submission_id)
        except SparkError as exc:
            return f"; kill failed: {exc.message}"
        return "; driver killed" if accepted else "; kill refused by Spark"

    def _fix(
        self,
        record: JobRecord,
        final_state: DriverState,
        message: str | None,
        fence: Fence | None,
        seen: DriverStatus | None = None,
        failure: Failure | None = None,
        seen_at: datetime | None = None,
        app: SparkApp | None = None,
    ) -> JobRecord:
        # Decided from ``record``: a request another process moved on meanwhile (a cancel
        # through a standby) is left as it is, and its next run decides again. Under a fence
        # no longer current (another process leads now), nothing is written.
        # The bound is of endings a poll saw in Spark's answer: not of the service's own.
        bound = self.policy.detection_bound_s if seen is not None else None
        details = EndDetails(failure=failure, spark_app=app, detection_bound_s=bound)
        fixed = self.store.complete(
            record.request_id, final_state, message, seen, record.phase, fence, details, seen_at
        )
        if fixed is None:
            return self._reload(record.request_id)
        source = self.sources.get(record.cluster)
        if source is not None and record.submission_id is not None:
            source.forget(record.submission_id)
        logger.info(
            "%s of %s ended %s",
            record.submission_id,
            record.request_id,
            final_state.value,
            extra={"request_id": record.request_id},
        )
        return fixed

    def _reload(self, request_id: str) -> JobRecord:
        record = self.store.get(request_id)
        if record is None:
            raise LookupError(f"request {request_id} vanished")
        return record

    def complete(self, request_id: str, final_state: DriverState, message: str | None) -> JobRecord:
        """Fix a request's outcome (if not already fixed) and offer its event to the outbox.

        Caller holds :meth:`lock_for`."""
        self.store.complete(request_id, final_state, message)
        return self.advance(request_id) or self._reload(request_id)


_installed: Poller | None = None


def install(poller: Poller | None) -> None:
    """Make ``poller`` the one that scheduled runs of :func:`run_poll` use in this process."""
    global _installed  # the scheduler stores a function reference, not an object
    _installed = poller


def run_poll(request_id: str) -> None:
    """The function every stored poll job references (``poller.polling:run_poll``)."""
    if _installed is None:
        raise RuntimeError("no Poller installed in this process")
    _installed.poll(request_id)
