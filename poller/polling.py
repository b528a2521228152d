"""The poll job: one run for one request_id. Imports no web framework and no scheduler.

A run is a small state machine driven by the request's record, so a crash at any point is repaired
by the next run: POLLING asks Spark and, on a terminal state, fixes the outcome in the database
(PUBLISHING); PUBLISHING publishes the event (built from the record, hence identical on every retry)
and waits for Kafka's ack, then marks the request DONE; DONE removes the job.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Mapping

from poller.errors import PollerError
from poller.events import EventPublisher
from poller.schemas import CompletionEvent, DriverState, JobRecord, Phase
from poller.spark import SparkClient
from poller.store import RequestStore

logger = logging.getLogger(__name__)

LOCK_STRIPES = 64

RemoveJob = Callable[[str], None]


class Poller:
    """Everything one poll run needs; the scheduler reaches it through :func:`run_poll`."""

    def __init__(
        self,
        store: RequestStore,
        clusters: Mapping[str, SparkClient],
        publisher: EventPublisher,
        remove_job: RemoveJob,
    ) -> None:
        self.store = store
        self.clusters = clusters
        self.publisher = publisher
        self.remove_job = remove_job
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def lock_for(self, request_id: str) -> threading.Lock:
        """Serialises the poll job and a cancel of the same request within this process."""
        return self._locks[zlib.crc32(request_id.encode()) % LOCK_STRIPES]

    def poll(self, request_id: str) -> None:
        """One scheduled run. Never raises: a failure leaves the job for the next run."""
        try:
            with self.lock_for(request_id):
                self._advance(request_id)
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

    def _advance(self, request_id: str) -> None:
        record = self.store.get(request_id)
        if record is None or record.phase == Phase.SUBMITTING:
            # Orphan, or registered before its submission committed: nothing to poll yet.
            if record is None:
                logger.warning("poll job %s has no request record; removing it", request_id)
                self.remove_job(request_id)
            return
        if record.phase == Phase.POLLING:
            record = self._check_spark(record)
        if record.phase == Phase.PUBLISHING:
            record = self._publish(record)
        if record.phase == Phase.DONE:
            self.remove_job(request_id)

    def _check_spark(self, record: JobRecord) -> JobRecord:
        assert record.submission_id is not None
        client = self.clusters[record.cluster]
        status = client.status(record.submission_id)
        self.store.record_poll(
            record.request_id,
            status.state if status.found else None,
            status.raw_state,
            status.message,
        )
        if not status.found:
            logger.info(
                "Spark does not know driver %s of %s (yet)",
                record.submission_id,
                record.request_id,
                extra={"request_id": record.request_id},
            )
        elif status.state is not None and status.state.terminal:
            self.store.complete(record.request_id, status.state, status.message)
            logger.info(
                "driver %s of %s ended %s",
                record.submission_id,
                record.request_id,
                status.state.value,
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
        record = self._reload(request_id)
        if record.phase == Phase.PUBLISHING:
            try:
                record = self._publish(record)
            except PollerError as exc:
                logger.warning(
                    "event for %s not yet published, the poll job retries: %s",
                    request_id,
                    exc.message,
                    extra={"request_id": request_id},
                )
                return record
        if record.phase == Phase.DONE:
            self.remove_job(request_id)
        return record

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
    from poller.schemas import event_id_for

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
    global _installed
    _installed = poller


def run_poll(request_id: str) -> None:
    """The function every stored poll job references (``poller.polling:run_poll``)."""
    if _installed is None:
        raise RuntimeError("no Poller installed in this process")
    _installed.poll(request_id)
