"""Publishes fixed outcomes (records in phase PUBLISHING) without holding a poll thread.

A poll run that finds its request in PUBLISHING only offers the record here and returns. The event
is queued on the producer, and the broker's delivery report, not a waiting thread, moves the request
on: one relay thread marks it done and removes its poll job, for all the reports at hand at once. A
failed or missing report leaves the request in PUBLISHING; its next poll run offers it again. So a
Kafka outage holds no thread, logs one line a minute rather than one per poll, and loses nothing.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from poller.errors import PollerError, PublishFailed
from poller.events import EventPublisher
from poller.logs import add_log_context, log_scope
from poller.metrics import (
    END_TO_EVENT_SECONDS,
    EVENTS_PUBLISHED,
    EVENTS_REPUBLISHED,
    PUBLISH_FAILURES,
    PUBLISH_SECONDS,
    SUBMIT_TO_EVENT_SECONDS,
)
from poller.schemas import CompletionEvent, JobRecord, TraceContext, event_id_for
from poller.store import RequestStore

logger = logging.getLogger(__name__)

RELAY_STEP_S = 0.5
SETTLE_BATCH = 1000
WAITING_REPORT_S = 60.0

RemoveJobs = Callable[[list[str]], None]


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
        started_at=record.started_at,
        duration_s=_duration_s(record.started_at, record.completed_at),
        detection_delay_bound_s=record.detection_delay_bound_s,
        worker=record.worker,
        spark_app=record.spark_app,
        failure=record.failure,
    )


def _duration_s(started_at: datetime | None, completed_at: datetime) -> float | None:
    if started_at is None:
        return None
    return round(max(0.0, (completed_at - started_at).total_seconds()), 3)


def trace_of(record: JobRecord) -> TraceContext | None:
    if record.traceparent is None:
        return None
    return TraceContext(traceparent=record.traceparent, tracestate=record.tracestate)


def _count_acked(record: JobRecord) -> None:
    """The broker has the event: how long it took from the poll that saw the ending."""
    if record.completed_at is not None:
        now = datetime.now(UTC)
        END_TO_EVENT_SECONDS.observe(max(0.0, (now - record.completed_at).total_seconds()))


def _count_published(record: JobRecord) -> None:
    """The request is done: its event counts, with how long it took from the submission."""
    EVENTS_PUBLISHED.labels(record.state.value).inc()
    now = datetime.now(UTC)
    SUBMIT_TO_EVENT_SECONDS.observe(max(0.0, (now - record.submitted_at).total_seconds()))


class Outbox:
    """Sends each offered record's event once at a time and settles it on the broker's report."""

    def __init__(
        self,
        store: RequestStore,
        publisher: EventPublisher,
        remove_jobs: RemoveJobs,
        stuck_after_s: float,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.remove_jobs = remove_jobs
        self.stuck_after_s = stuck_after_s
        self._lock = threading.Lock()
        # request_id -> when it was sent (monotonic) and the producer that took it
        # A send is one attempt: a report about an attempt no longer in flight (given up as stuck,
        # then purged with its producer) must not settle or fail the one that replaced it.
        self._in_flight: dict[str, tuple[float, object, int]] = {}
        self._attempts = itertools.count(1)
        self._delivered: dict[str, threading.Event] = {}
        self._reports: queue.Queue[tuple[str, str | None, int]] = queue.Queue()
        self._unsettled: set[str] = set()  # delivered, not yet marked done (database down)
        self._offered: dict[str, JobRecord] = {}  # what was sent, for the metrics once settled
        self._waiting: dict[str, str] = {}  # request_id -> why its last attempt failed
        self._last_report = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name="outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, record: JobRecord) -> None:
        """Send the record's event unless it is already on its way. Never blocks, never raises."""
        request_id = record.request_id
        with self._lock:
            if request_id in self._in_flight or request_id in self._unsettled:
                return
            attempt = next(self._attempts)
            self._in_flight[request_id] = (time.monotonic(), None, attempt)
            self._offered[request_id] = record
        try:
            producer = self.publisher.send(
                completion_event(record),
                lambda err: self._reports.put((request_id, err, attempt)),
                trace_of(record),
            )
        except PublishFailed as exc:
            self._failed(request_id, exc.message, "refused")
        except Exception as exc:  # a record we cannot turn into an event: say so, try again
            logger.exception("event of %s could not be built", request_id)
            self._failed(request_id, f"could not build the event: {type(exc).__name__}", "build")
        else:
            with self._lock:
                sent = self._in_flight.get(request_id)
                if sent is not None and sent[2] == attempt:
                    self._in_flight[request_id] = (sent[0], producer, attempt)

    def republish(self, record: JobRecord, timeout_s: float) -> None:
        """Send a done request's event again, as stored, and wait for Kafka's ack: nothing is
        recorded (the request stays done). Raises PublishFailed when Kafka did not take it in
        ``timeout_s``."""
        reports: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.publisher.send(completion_event(record), reports.put, trace_of(record))
        try:
            failure = reports.get(timeout=timeout_s)
        except queue.Empty:
            raise PublishFailed(
                f"Kafka did not confirm the event within {timeout_s:g}s; try again"
            ) from None
        if failure is not None:
            raise PublishFailed(failure)
        EVENTS_REPUBLISHED.labels(record.state.value).inc()

    def wait_published(self, request_id: str, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the event of an offered request to be confirmed here.

        False also when it was settled before the wait began: the caller reads the record."""
        with self._lock:
            if request_id not in self._in_flight and request_id not in self._unsettled:
                return False
            delivered = self._delivered.setdefault(request_id, threading.Event())
        settled = delivered.wait(timeout_s)
        if not settled:
            with self._lock:
                if self._delivered.get(request_id) is delivered:
                    del self._delivered[request_id]
        return settled

    def stop(self, timeout_s: float = 5.0) -> None:
        """Settle the reports already received (the caller flushed the producer), then stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _relay(self) -> None:
        next_housekeeping = time.monotonic() + RELAY_STEP_S
        while True:
            reports = self._next_reports()
            if not reports and self._stop.is_set():
                return
            delivered: list[str] = []
            for request_id, error, attempt in reports:
                with self._lock:
                    sent = self._in_flight.get(request_id)
                    current = sent is not None and sent[2] == attempt
                    acked = self._offered.get(request_id) if current else None
                    if error is None:  # whichever attempt it was, the broker has the event
                        self._unsettled.add(request_id)
                        self._waiting.pop(request_id, None)
                        if current:
                            del self._in_flight[request_id]
                if error is None:
                    if current and sent is not None:
                        PUBLISH_SECONDS.observe(time.monotonic() - sent[0])
                    if acked is not None:
                        _count_acked(acked)
                    delivered.append(request_id)
                elif current:
                    self._failed(request_id, error, "delivery")
                # else: the failure of an attempt already given up; its successor is on its way
            if delivered:
                self._settle(delivered)
            # After the reports at hand: an event whose report was waiting here is not stuck.
            if time.monotonic() >= next_housekeeping:  # on a clock: reports may never pause
                next_housekeeping = time.monotonic() + RELAY_STEP_S
                self._housekeeping()

    def _next_reports(self) -> list[tuple[str, str | None, int]]:
        """The reports received so far (up to a batch), waiting a step for the first one."""
        try:
            reports = [self._reports.get(timeout=RELAY_STEP_S)]
        except queue.Empty:
            return []
        while len(reports) < SETTLE_BATCH:
            try:
                reports.append(self._reports.get_nowait())
            except queue.Empty:
                break
        return reports

    def _settle(self, request_ids: list[str]) -> None:
        """Kafka has their events: the requests are done and their poll jobs go, in one
        transaction each, however many reports came in at once."""
        try:
            self.store.mark_published(request_ids)
        except PollerError as exc:
            logger.warning(
                "%d event(s) out but not yet recorded (%s); retrying",
                len(request_ids),
                exc.message,
            )
            return
        with self._lock:
            for request_id in request_ids:
                self._unsettled.discard(request_id)
            delivered = [self._delivered.pop(r, None) for r in request_ids]
            records = [self._offered.pop(r, None) for r in request_ids]
        for event in delivered:
            if event is not None:
                event.set()
        for request_id, record in zip(request_ids, records, strict=True):
            if record is not None:
                _count_published(record)
            self._log_published(request_id, record)
        try:
            self.remove_jobs(request_ids)
        except PollerError as exc:  # the reconcile removes the orphan jobs later
            logger.warning("poll jobs of %d request(s) not removed yet: %s", len(request_ids), exc)

    @staticmethod
    @log_scope
    def _log_published(request_id: str, record: JobRecord | None) -> None:
        add_log_context(request_id=request_id)
        if record is not None:
            add_log_context(submission_id=record.submission_id, cluster=record.cluster)
        logger.info("published the event of %s", request_id, extra={"request_id": request_id})

    @log_scope
    def _failed(self, request_id: str, reason: str, cause: str) -> None:
        add_log_context(request_id=request_id)
        PUBLISH_FAILURES.labels(cause).inc()
        with self._lock:
            self._in_flight.pop(request_id, None)
            self._offered.pop(request_id, None)
            self._waiting[request_id] = reason
        logger.debug("event of %s not published: %s", request_id, reason)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        with self._lock:
            unsettled = list(self._unsettled)
            stuck = {
                r: producer
                for r, (at, producer, _) in self._in_flight.items()
                if now - at > self.stuck_after_s
            }
            for request_id in stuck:
                del self._in_flight[request_id]
                self._offered.pop(request_id, None)
                self._waiting[request_id] = "no delivery report from Kafka"
                PUBLISH_FAILURES.labels("no_report").inc()
            waiting = dict(self._waiting)
        if unsettled:
            self._settle(unsettled)
        for producer in {id(p): p for p in stuck.values() if p is not None}.values():
            self.publisher.replace_if_stuck(producer)
        if waiting and now - self._last_report >= WAITING_REPORT_S:
            self._last_report = now
            with self._lock:
                self._waiting.clear()
            logger.warning(
                "%d event(s) waiting for Kafka, retried on their next poll; last reason: %s",
                len(waiting),
                next(reversed(waiting.values())),
            )
