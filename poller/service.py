"""Composition root and use cases: builds every part from Settings; submit, get, list, cancel."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from poller import polling
from poller.config import Settings
from poller.db import create_db_engine
from poller.errors import (
    InvalidRequest,
    PollerError,
    RequestConflict,
    RequestNotFound,
    SparkError,
    SparkUnavailable,
    StoreUnavailable,
    SubmissionUnknown,
    UnknownCluster,
)
from poller.events import EventPublisher, producer_config
from poller.polling import Poller, PollPolicy
from poller.scheduler import PollScheduler
from poller.schemas import (
    DriverState,
    JobPage,
    JobRecord,
    Phase,
    SubmitRequest,
    SubmitResponse,
)
from poller.spark import SparkClient
from poller.store import RequestStore

logger = logging.getLogger(__name__)

JOB_FUNC = "poller.polling:run_poll"
WATCHDOG_STEP_S = 1.0
KILL_CONFIRM_INLINE_S = 3.0
KILL_CONFIRM_STEP_S = 0.2


class Service:
    """The running service: request store, Spark clients, event publisher, poll scheduler."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = create_db_engine(
            settings.database_url.get_secret_value(), pool_size=settings.scheduler_threads + 5
        )
        self.store = RequestStore(self.engine)
        self.clusters = {
            name: SparkClient(
                name,
                cluster,
                settings.spark_timeout_s,
                settings.spark_client_version,
                pool_size=settings.scheduler_threads,
            )
            for name, cluster in settings.clusters.items()
        }
        self.publisher = EventPublisher(
            producer_config(settings),
            settings.kafka_topic,
            settings.event_source,
            settings.kafka_delivery_timeout_s,
        )
        self.scheduler = PollScheduler(
            self.engine, JOB_FUNC, settings.poll_interval_seconds, settings.scheduler_threads
        )
        policy = PollPolicy(
            lost_after_unknown_polls=settings.lost_after_unknown_polls,
            max_submitted_s=settings.max_submitted_s,
            max_tracking_s=settings.max_tracking_s,
            kill_on_timeout=settings.kill_on_timeout,
            kill_confirm_timeout_s=settings.kill_confirm_timeout_s,
        )
        self.poller = Poller(
            self.store, self.clusters, self.publisher, self.scheduler.remove, policy
        )
        self.fatal: str | None = None
        self.on_fatal: Callable[[str], None] | None = None
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Create tables, start the scheduler paused, repair jobs from our records, then poll."""
        self.store.create_schema()
        polling.install(self.poller)
        self.scheduler.start()
        self.reconcile(load_jobs=True)
        self.scheduler.resume()
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._watchdog.start()
        logger.info(
            "service started: %d cluster(s), poll interval %.3gs, topic %s",
            len(self.clusters),
            self.settings.poll_interval_seconds,
            self.settings.kafka_topic,
        )

    def stop(self) -> None:
        """Let running polls finish, flush the producer, release connections."""
        self._stopping.set()
        # Running polls may finish, within a bound: an interrupted one is redone after restart.
        stopper = threading.Thread(target=self.scheduler.shutdown, name="scheduler-stop")
        stopper.start()
        stopper.join(self.settings.shutdown_timeout_s)
        if stopper.is_alive():
            logger.warning(
                "polls still running after %.0fs; stopping without them",
                self.settings.shutdown_timeout_s,
            )
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
        self.publisher.close()
        polling.install(None)
        for client in self.clusters.values():
            client.close()
        self.engine.dispose()
        logger.info("service stopped")

    def reconcile(self, load_jobs: bool = False) -> tuple[int, int]:
        """Make poll jobs match our records: re-create missing ones, drop orphans.

        ``load_jobs`` unpickles every stored job (APScheduler deletes rows it cannot load), which
        start-up wants; the periodic check only reads ids. Jobs are read before records so a
        request finishing in between is never given a fresh job.
        """
        recovered = self._recover_submissions(at_startup=load_jobs)
        jobs = self.scheduler.job_ids() if load_jobs else self.scheduler.stored_ids()
        active = self.store.active_ids()
        missing = active - jobs
        orphans = jobs - active
        now = datetime.now(UTC)
        for request_id in sorted(missing):
            self.scheduler.add(request_id, first_run_at=now)
        for request_id in sorted(orphans):
            self.scheduler.remove(request_id)
        if recovered:
            logger.warning("resolved %d interrupted submission(s)", recovered)
        if missing or orphans:
            logger.warning(
                "reconciled poll jobs: re-created %d missing (%s), removed %d orphan(s) (%s)",
                len(missing),
                _sample(missing),
                len(orphans),
                _sample(orphans),
            )
        elif load_jobs:
            logger.info("poll jobs match records: %d in flight", len(active))
        return len(missing), len(orphans)

    def _watch(self) -> None:
        """Exit rather than sit alive with a dead scheduler; reconcile now and then."""
        last_reconcile = datetime.now(UTC)
        while not self._stopping.wait(WATCHDOG_STEP_S):
            if not self.scheduler.alive():
                self._die("the scheduler thread died")
                return
            if (datetime.now(UTC) - last_reconcile).total_seconds() >= (
                self.settings.reconcile_interval_s
            ):
                last_reconcile = datetime.now(UTC)
                try:
                    self.reconcile()
                except Exception as exc:
                    logger.warning("periodic reconcile failed: %s", exc)

    def _die(self, reason: str) -> None:
        self.fatal = reason
        logger.critical("fatal: %s; stopping", reason)
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def healthy(self) -> bool:
        return self.fatal is None and self.scheduler.alive()

    def readiness(self) -> dict[str, str]:
        """Each dependency's state: "ok" or what is wrong with it."""
        try:
            self.store.ping()
            database = "ok"
        except PollerError as exc:
            database = exc.message
        return {
            "database": database,
            "kafka": self.publisher.problem() or "ok",
            "scheduler": "ok" if self.healthy() else (self.fatal or "not running"),
        }

    # -- use cases -------------------------------------------------------------------------------

    def _client(self, cluster: str) -> SparkClient:
        try:
            return self.clusters[cluster]
        except KeyError:
            known = ", ".join(sorted(self.clusters))
            raise UnknownCluster(f"unknown cluster {cluster!r}; known: {known}") from None

    def _check_allowed(self, app_resource: str) -> None:
        patterns = self.settings.allowed_app_resources
        if patterns and not any(re.fullmatch(p, app_resource) for p in patterns):
            raise InvalidRequest("app_resource is not in the allowed list of this service")

    def _insert(self, request_id: str, request: SubmitRequest) -> None:
        """Record the request before Spark hears of it; a taken id says what it already is."""
        try:
            self.store.insert(
                request_id, request.cluster, request.labels, submission_id=request.submission_id
            )
        except RequestConflict:
            existing = self.store.get(request_id)
            if existing is None:
                raise
            where = f", driver {existing.submission_id}" if existing.submission_id else ""
            raise RequestConflict(
                f"request_id {request_id!r} already exists: {existing.state.value}"
                f" ({existing.phase.value}{where})"
            ) from None

    def _give_up_submission(self, request_id: str, why: str) -> None:
        """Spark may have taken the submission: never resubmit, publish SUBMIT_UNKNOWN instead."""
        message = (
            f"{why}; whether Spark created the driver is unknown, so it was not submitted again"
        )
        if self.store.resolve_submitting(request_id, DriverState.SUBMIT_UNKNOWN, message):
            logger.error(
                "submission of %s has an unknown outcome: %s",
                request_id,
                why,
                extra={"request_id": request_id},
            )
            with contextlib.suppress(StoreUnavailable):
                self.scheduler.add(request_id, first_run_at=datetime.now(UTC))
        raise SubmissionUnknown(f"request {request_id!r}: {message}")

    def _recover_submissions(self, at_startup: bool) -> int:
        """Resolve submissions a dead (or stuck) submit call left in SUBMITTING."""
        grace_s = 0.0 if at_startup else self.settings.spark_timeout_s * 4 + 30
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
        recovered = 0
        for record in self.store.submitting_since(cutoff):
            recovered += 1
            if record.submission_id is not None:  # an adoption: the driver is known, poll it
                self.store.mark_submitted(
                    record.request_id, record.submission_id, DriverState.UNKNOWN
                )
                continue
            with contextlib.suppress(SubmissionUnknown):
                self._give_up_submission(
                    record.request_id, "the service stopped while submitting to Spark"
                )
        return recovered

    def submit(self, request: SubmitRequest) -> SubmitResponse:
        """Submit (or adopt) a driver and register its poll job. Nothing stays behind on failure."""
        client = self._client(request.cluster)
        if request.job is not None:
            self._check_allowed(request.job.app_resource)
        request_id = request.request_id or str(uuid.uuid4())
        self._insert(request_id, request)
        try:
            if request.job is not None:
                submission_id = client.create(request.job, request_id)
                state = DriverState.SUBMITTED
            else:
                assert request.submission_id is not None
                submission_id = request.submission_id
                status = client.status(submission_id)
                if not status.found or status.state is None:
                    raise InvalidRequest(
                        f"cluster {request.cluster!r} has no driver {submission_id!r} to adopt"
                    )
                state = status.state
        except SparkUnavailable as exc:
            if request.job is not None and exc.maybe_applied:
                self._give_up_submission(
                    request_id, f"Spark did not answer the submission: {exc.message}"
                )
            self.store.delete_submitting(request_id)
            raise
        except (SparkError, InvalidRequest):
            self.store.delete_submitting(request_id)
            raise
        if self.store.mark_submitted(request_id, submission_id, state) is None:
            raise SubmissionUnknown(
                f"request {request_id!r} was resolved as SUBMIT_UNKNOWN while Spark was answering"
            )
        # An adopted driver that already ended is published at once rather than after an interval.
        try:
            self.scheduler.add(
                request_id, first_run_at=datetime.now(UTC) if state.terminal else None
            )
        except StoreUnavailable as exc:
            # The record says "polling", so the periodic reconcile registers the job later.
            logger.warning(
                "poll job of %s not registered yet (%s); reconcile will add it",
                request_id,
                exc.message,
                extra={"request_id": request_id},
            )
        logger.info(
            "tracking %s: driver %s on %s (%s)",
            request_id,
            submission_id,
            request.cluster,
            "adopted" if request.job is None else "submitted",
            extra={"request_id": request_id, "submission_id": submission_id},
        )
        return SubmitResponse(
            request_id=request_id, submission_id=submission_id, cluster=request.cluster, state=state
        )

    def get(self, request_id: str) -> JobRecord:
        record = self.store.get(request_id)
        if record is None:
            raise RequestNotFound(f"no request {request_id!r}")
        return self._with_next_poll([record])[0]

    def list_jobs(self, state: DriverState | None, limit: int, offset: int) -> JobPage:
        items, total = self.store.page(state, limit, offset)
        return JobPage(items=self._with_next_poll(items), total=total, limit=limit, offset=offset)

    def _with_next_poll(self, records: list[JobRecord]) -> list[JobRecord]:
        active = [r.request_id for r in records if r.phase in (Phase.POLLING, Phase.PUBLISHING)]
        next_runs = self.scheduler.next_run_times(active)
        return [
            r.model_copy(update={"next_poll_at": next_runs[r.request_id]})
            if r.request_id in next_runs
            else r
            for r in records
        ]

    def cancel(self, request_id: str, kill: bool) -> JobRecord:
        """Stop polling and publish a CANCELLED event.

        With ``kill`` Spark is asked to kill the driver first, and the event waits for Spark to
        confirm the driver ended (briefly here, then in the poll job up to a deadline); the
        returned record is then in phase ``cancelling``.
        """
        with self.poller.lock_for(request_id):
            record = self.store.get(request_id)
            if record is None:
                raise RequestNotFound(f"no request {request_id!r}")
            if record.phase == Phase.SUBMITTING:
                raise RequestConflict(f"request {request_id!r} is still being submitted")
            if record.phase == Phase.CANCELLING:
                raise RequestConflict(f"request {request_id!r} is already being cancelled")
            if record.phase != Phase.POLLING:
                raise RequestConflict(
                    f"request {request_id!r} already ended ({record.state.value})"
                )
            if not kill or record.submission_id is None:
                record = self.poller.complete(
                    request_id, DriverState.CANCELLED, "cancelled by request"
                )
            else:
                record = self._kill_and_confirm(record)
        logger.info(
            "cancel of %s: %s (kill=%s)",
            request_id,
            record.phase.value,
            kill,
            extra={"request_id": request_id},
        )
        return self._with_next_poll([record])[0]

    def _kill_and_confirm(self, record: JobRecord) -> JobRecord:
        assert record.submission_id is not None
        accepted, spark_message = self._client(record.cluster).kill(record.submission_id)
        message = f"cancelled by request; kill {'accepted' if accepted else 'refused'} by Spark"
        if spark_message:
            message += f": {spark_message}"
        self.store.mark_cancelling(record.request_id, message)
        # Spark reports KILLED a fraction of a second after the kill: confirm it here if we can.
        deadline = time.monotonic() + KILL_CONFIRM_INLINE_S
        while True:
            current = self.poller.advance(record.request_id)
            if current is None or current.phase != Phase.CANCELLING:
                return current or record
            if time.monotonic() > deadline:
                return current
            time.sleep(KILL_CONFIRM_STEP_S)


def _sample(ids: set[str], limit: int = 5) -> str:
    shown = sorted(ids)[:limit]
    return ", ".join(shown) + (", ..." if len(ids) > limit else "")


__all__ = ["PollerError", "Service"]
