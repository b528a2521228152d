"""The poll job: one run for one request_id. Imports no web framework and no scheduler.

A run is a small state machine driven by the request's record, so a crash at any point is repaired
by the next run: POLLING (and CANCELLING, a kill awaiting Spark's confirmation) asks Spark and, on
an ending, fixes the outcome in the database (PUBLISHING); PUBLISHING publishes the event (built
from the record, hence identical on every retry) and waits for Kafka's ack, then marks the request
DONE; DONE removes the job.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from poller.errors import PollerError, SparkError
from poller.events import EventPublisher
from poller.schemas import CompletionEvent, DriverState, JobRecord, Phase, event_id_for
from poller.spark import SparkClient
from poller.store import RequestStore, utcnow

logger = logging.getLogger(__name__)

LOCK_STRIPES = 64
ASKING_SPARK = (Phase.POLLING, Phase.CANCELLING)

RemoveJob = Callable[[str], None]


@dataclass(frozen=True)
class PollPolicy:
    """When the service stops waiting for a driver."""

    lost_after_unknown_polls: int = 10
    max_submitted_s: float | None = None
    max_tracking_s: float | None = None
    kill_on_timeout: bool = False
    kill_confirm_timeout_s: float = 60.0


class Poller:
    """Everything one poll run needs; the scheduler reaches it through :func:`run_poll`."""

    def __init__(
        self,
        store: RequestStore,
        clusters: Mapping[str, SparkClient],
        publisher: EventPublisher,
        remove_job: RemoveJob,
        policy: PollPolicy | None = None,
    ) -> None:
        self.store = store
        self.clusters = clusters
        self.publisher = publisher
        self.remove_job = remove_job
        self.policy = policy or PollPolicy()
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def lock_for(self, request_id: str) -> threading.Lock:
        """Serialises the poll job and a cancel of the same request within this process."""
        return self._locks[zlib.crc32(request_id.encode()) % LOCK_STRIPES]

    def poll(self, request_id: str) -> None:
        """One scheduled run. Never raises: a failure leaves the job for the next run."""
        try:
            with self.lock_for(request_id):
                self.advance(request_id)
        except PollerError as exc:
            logger.warning(
                "poll of %s failed, retrying next run: %s",
                request_id,
                exc.message,
                extra={"request_id": request_id},
            )
        except Exception:
            logger.exception(
                "poll of %s failed unexpectedly, retrying next run",
                request_id,
                extra={"request_id": request_id},
            )

    def advance(self, request_id: str) -> JobRecord | None:
        """Take the request as far as it can go now. Caller holds :meth:`lock_for`."""
        record = self.store.get(request_id)
        if record is None:
            logger.warning("poll job %s has no request record; removing it", request_id)
            self.remove_job(request_id)
            return None
        if record.phase in ASKING_SPARK:
            record = self._check_spark(record)
        if record.phase == Phase.PUBLISHING:
            record = self._publish(record)
        if record.phase == Phase.DONE:
            self.remove_job(request_id)
        return record

    def _check_spark(self, record: JobRecord) -> JobRecord:
        assert record.submission_id is not None
        status = self.clusters[record.cluster].status(record.submission_id)
        self.store.record_poll(
            record.request_id,
            status.state if status.found else None,
            status.raw_state,
            status.message,
        )
        record = self._reload(record.request_id)
        if status.found and status.state is not None and status.state.terminal:
            if record.phase == Phase.CANCELLING:
                return self._fix(
                    record,
                    DriverState.CANCELLED,
                    f"{record.message}; driver ended {status.state.value}",
                )
            return self._fix(record, status.state, status.message)
        if not status.found:
            if record.unknown_polls >= self.policy.lost_after_unknown_polls:
                return self._fix(
                    record,
                    DriverState.LOST,
                    (
                        f"Spark has not known driver {record.submission_id} for "
                        f"{record.unknown_polls} polls in a row (master restarted without "
                        "recovery, or the driver was evicted)"
                    ),
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
            requested = record.cancel_requested_at or now
            if (now - requested).total_seconds() > self.policy.kill_confirm_timeout_s:
                return self._fix(
                    record,
                    DriverState.CANCELLED,
                    (
                        f"{record.message}; Spark did not confirm the kill within "
                        f"{self.policy.kill_confirm_timeout_s:g}s"
                    ),
                )
            return record
        reason = self._overdue(record, now)
        if reason is not None:
            if self.policy.kill_on_timeout:
                reason += self._kill(record)
            return self._fix(record, DriverState.TIMED_OUT, reason)
        return record

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

    def _kill(self, record: JobRecord) -> str:
        assert record.submission_id is not None
        try:
            accepted, _ = self.clusters[record.cluster].kill(record.submission_id)
        except SparkError as exc:
            return f"; kill failed: {exc.message}"
        return "; driver killed" if accepted else "; kill refused by Spark"

    def _fix(self, record: JobRecord, final_state: DriverState, message: str | None) -> JobRecord:
        self.store.complete(record.request_id, final_state, message)
        logger.info(
            "%s of %s ended %s",
            record.submission_id,
            record.request_id,
            final_state.value,
            extra={"request_id": record.request_id},
        )
        return self._reload(record.request_id)

    def _reload(self, request_id: str) -> JobRecord:
        record = self.store.get(request_id)
        if record is None:
            raise LookupError(f"request {request_id} vanished")
        return record

    def complete(self, request_id: str, final_state: DriverState, message: str | None) -> JobRecord:
        """Fix a request's outcome (if not already fixed) and publish its event now if Kafka allows.

        Caller holds :meth:`lock_for`. If publishing fails the poll job stays and retries it.
        """
        self.store.complete(request_id, final_state, message)
        try:
            record = self.advance(request_id)
        except PollerError as exc:
            logger.warning(
                "event for %s not yet published, the poll job retries: %s",
                request_id,
                exc.message,
                extra={"request_id": request_id},
            )
            record = None
        return record or self._reload(request_id)

    def _publish(self, record: JobRecord) -> JobRecord:
        self.publisher.publish(completion_event(record))
        self.store.mark_published(record.request_id)
        logger.info(
            "published %s event for %s",
            record.state.value,
            record.request_id,
            extra={"request_id": record.request_id, "submission_id": record.submission_id},
        )
        return self._reload(record.request_id)


def completion_event(record: JobRecord) -> CompletionEvent:
    """The request's event, built only from its stored record so every re-publish is identical."""
    assert record.completed_at is not None
    return CompletionEvent(
        event_id=event_id_for(record.request_id),
        request_id=record.request_id,
        submission_id=record.submission_id,
        cluster=record.cluster,
        state=record.state,
        spark_state=record.spark_state,
        message=record.message,
        submitted_at=record.submitted_at,
        completed_at=record.completed_at,
        polls=record.polls,
        labels=record.labels,
    )


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
