"""The use cases: submit or adopt, look up, list, cancel; and the repairs of interrupted submits."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from poller import admission, paging
from poller.config import Settings
from poller.errors import (
    DriverTaken,
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
from poller.logs import add_log_context, log_scope
from poller.outbox import Outbox
from poller.polling import Poller
from poller.scheduler import PollScheduler
from poller.schemas import (
    DriverState,
    JobFilter,
    JobPage,
    JobRecord,
    JobSpec,
    Phase,
    Republished,
    SubmitRequest,
    SubmitResponse,
    TraceContext,
    event_id_for,
)
from poller.spark import SparkClient, app_name
from poller.store import RequestStore

logger = logging.getLogger(__name__)

KILL_CONFIRM_INLINE_S = 3.0
KILL_CONFIRM_STEP_S = 0.2
CANCEL_PUBLISH_WAIT_S = 3.0
REPUBLISH_WAIT_S = 10.0  # Kafka's ack of a re-published event
MAX_PAGE_BYTES = 1024 * 1024
MAX_COUNTED = 10_000
PAGE_CHUNK = 50
SUBMIT_GRACE_MARGIN_S = 30.0


def submit_grace_s(clusters: Mapping[str, SparkClient]) -> float:
    """How long a submit call can last, every retry and master included, plus a margin for
    the database writes around it and for clocks that differ between hosts."""
    longest = max((client.longest_call_s for client in clusters.values()), default=0.0)
    return longest + SUBMIT_GRACE_MARGIN_S


class Jobs:
    """What callers ask of the service, on the parts the composition root built."""

    def __init__(
        self,
        settings: Settings,
        store: RequestStore,
        clusters: Mapping[str, SparkClient],
        scheduler: PollScheduler,
        poller: Poller,
        outbox: Outbox,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clusters = clusters
        self.scheduler = scheduler
        self.poller = poller
        self.outbox = outbox
        # Submits' last writes that met a database outage, retried by the watchdog.
        self._pending_lock = threading.Lock()
        self._to_record: dict[str, tuple[str, DriverState]] = {}
        self._to_forget: set[str] = set()
        self._submitting: set[str] = set()

    @property
    def submit_grace_s(self) -> float:
        return submit_grace_s(self.clusters)

    @property
    def pending_writes(self) -> bool:
        return bool(self._to_record or self._to_forget)

    @log_scope
    def submit(self, request: SubmitRequest, trace: TraceContext | None = None) -> SubmitResponse:
        """Submit (or adopt) a driver and register its poll job. Nothing stays behind on failure.

        ``trace`` (the caller's trace context) is kept with the request for its event."""
        client = self._client(request.cluster)
        if request.job is not None:
            self._check_allowed(request.job)
        request_id = request.request_id or str(uuid.uuid4())
        add_log_context(
            request_id=request_id, cluster=request.cluster, submission_id=request.submission_id
        )
        if request.job is None:
            return self._adopt(request_id, request, trace)
        recorded = self._insert(request_id, request, trace)
        with self._pending_lock:
            self._submitting.add(request_id)  # recovery leaves it alone while we are at it
        try:
            return self._submit_recorded(request_id, request.job, client, recorded.spark_tag)
        finally:
            with self._pending_lock:
                self._submitting.discard(request_id)

    def _adopt(
        self,
        request_id: str,
        request: SubmitRequest,
        trace: TraceContext | None,
    ) -> SubmitResponse:
        """Track a driver Spark already runs: read its state, then record the request and its
        poll job in one transaction. Nothing asked of Spark needs undoing if that fails."""
        assert request.submission_id is not None
        submission_id = request.submission_id
        existing = self.store.get(request_id)  # a retried adoption is answered without Spark
        if existing is not None:
            raise self._conflict(existing)
        # As a poll asks: from a fresh cluster view (no call to the master) when it shows the
        # driver, else its REST status; a view older than this answer is never used for it.
        status = self.poller.sources[request.cluster].status(submission_id)
        if not status.found or status.state is None:
            raise InvalidRequest(
                f"cluster {request.cluster!r} has no driver {submission_id!r} to adopt"
            )
        state = status.state
        # An adopted driver that already ended is published at once rather than after an interval.
        with self.scheduler.adding(
            request_id, first_run_at=datetime.now(UTC) if state.terminal else None
        ) as write_job:
            self._insert(
                request_id, request, trace, adopted=(state, status.raw_state), also=write_job
            )
        return self._tracking(request_id, submission_id, request.cluster, state, "adopted")

    def _submit_recorded(
        self, request_id: str, job: JobSpec, client: SparkClient, tag: str | None
    ) -> SubmitResponse:
        try:
            submission_id = client.create(job, request_id, tag)
        except SparkUnavailable as exc:
            if exc.maybe_applied:
                self._give_up_submission(
                    request_id, f"Spark did not answer the submission: {exc.message}"
                )
            self._forget(request_id)
            raise
        except SparkError:
            self._forget(request_id)
            raise
        except Exception as exc:
            # Not one of the client's answers: the create may have been sent.
            self._give_up_submission(
                request_id, f"the submission failed unexpectedly ({type(exc).__name__})"
            )
            self._forget(request_id)
            raise
        self._record_submitted(request_id, submission_id, DriverState.SUBMITTED)
        return self._tracking(
            request_id, submission_id, client.name, DriverState.SUBMITTED, "submitted"
        )

    @staticmethod
    def _tracking(
        request_id: str, submission_id: str, cluster: str, state: DriverState, how: str
    ) -> SubmitResponse:
        logger.info(
            "tracking %s: driver %s on %s (%s)",
            request_id,
            submission_id,
            cluster,
            how,
            extra={"request_id": request_id, "submission_id": submission_id},
        )
        return SubmitResponse(
            request_id=request_id, submission_id=submission_id, cluster=cluster, state=state
        )

    def _insert(
        self,
        request_id: str,
        request: SubmitRequest,
        trace: TraceContext | None,
        adopted: tuple[DriverState, str | None] | None = None,
        also: Callable[[Connection], None] | None = None,
    ) -> JobRecord:
        """Record the request (before Spark hears of a create); a taken id says what it is."""
        try:
            return self.store.insert(
                request_id,
                request.cluster,
                request.labels,
                submission_id=request.submission_id,
                trace=trace,
                adopted=adopted,
                also=also,
                app_name=None if request.job is None else app_name(request.job, request_id),
            )
        except DriverTaken:
            raise  # one driver, one request: its message names the request tracking the driver
        except RequestConflict:
            existing = self.store.get(request_id)
            if existing is None:
                raise
            raise self._conflict(existing) from None

    @staticmethod
    def _conflict(existing: JobRecord) -> RequestConflict:
        where = f", driver {existing.submission_id}" if existing.submission_id else ""
        return RequestConflict(
            f"request_id {existing.request_id!r} already exists: {existing.state.value}"
            f" ({existing.phase.value}{where})"
        )

    def _client(self, cluster: str) -> SparkClient:
        try:
            return self.clusters[cluster]
        except KeyError:
            known = ", ".join(sorted(self.clusters))
            raise UnknownCluster(f"unknown cluster {cluster!r}; known: {known}") from None

    def _check_allowed(self, job: JobSpec) -> None:
        """The operator's admission policy, before anything is recorded or submitted."""
        admission.admit(job, self.settings)

    def _give_up_submission(self, request_id: str, why: str) -> None:
        """Spark may have taken the submission: never resubmit. Its driver is looked for (by
        its tag) for ``recovery_search_s``, then the request ends SUBMIT_UNKNOWN."""
        search_s = self.settings.recovery_search_s
        if search_s <= 0:
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
        now = datetime.now(UTC)
        with self.scheduler.adding(request_id, first_run_at=now) as write_job:
            searching = self.store.start_search(
                request_id, now + timedelta(seconds=search_s), why, also=write_job
            )
        if searching:
            logger.warning(
                "submission of %s may have made a driver (%s): looking for it on the cluster",
                request_id,
                why,
                extra={"request_id": request_id},
            )
        raise SubmissionUnknown(
            f"request {request_id!r}: {why}; Spark may have created the driver, so it is not "
            f"submitted again: it is looked for on the cluster for up to {search_s:g}s, and the "
            "request's event says what became of it"
        )

    def _forget(self, request_id: str) -> None:
        """Spark surely has no driver for the request: drop its record, now or once the database
        answers again (a record left SUBMITTING would end SUBMIT_UNKNOWN)."""
        try:
            self.store.delete_submitting(request_id)
        except StoreUnavailable:
            with self._pending_lock:
                self._to_forget.add(request_id)

    def _record_submitted(self, request_id: str, submission_id: str, state: DriverState) -> None:
        """Spark took the driver: record it with its poll job, or keep trying until the database
        answers (the driver is tracked from then on, never guessed at as SUBMIT_UNKNOWN by this
        process)."""
        try:
            recorded = self._write_submitted(request_id, submission_id, state)
        except StoreUnavailable as exc:
            with self._pending_lock:
                self._to_record[request_id] = (submission_id, state)
            logger.error(
                "driver %s of %s is made but not yet recorded (%s); retrying",
                submission_id,
                request_id,
                exc.message,
                extra={"request_id": request_id, "submission_id": submission_id},
            )
            return
        if not recorded:
            raise SubmissionUnknown(
                f"request {request_id!r} was resolved as SUBMIT_UNKNOWN while Spark was answering"
            )

    def _write_submitted(self, request_id: str, submission_id: str, state: DriverState) -> bool:
        """The request moves to POLLING and gets its poll job, in one transaction; False if it
        was no longer SUBMITTING."""
        with self.scheduler.adding(request_id) as write_job:
            recorded = self.store.mark_submitted(request_id, submission_id, state, also=write_job)
        return recorded is not None

    def flush_pending_writes(self, timeout_s: float) -> None:
        """At a stop: write what submits could not, for up to ``timeout_s``; name what is left.

        A driver left unrecorded ends SUBMIT_UNKNOWN after the grace; the log line says which
        driver it was, so an operator can adopt it under another request_id."""
        deadline = time.monotonic() + timeout_s
        while self.pending_writes and time.monotonic() < deadline:
            try:
                self.retry_pending_writes()
            except Exception:
                time.sleep(0.5)
        with self._pending_lock:
            unrecorded = {r: s for r, (s, _) in self._to_record.items()}
            unforgotten = sorted(self._to_forget)
        if unrecorded:
            logger.critical(
                "stopping with drivers made but not recorded (request_id: submission_id): %s",
                ", ".join(f"{r}: {s}" for r, s in sorted(unrecorded.items())),
            )
        if unforgotten:
            logger.critical(
                "stopping with refused submissions still recorded (will end SUBMIT_UNKNOWN): %s",
                ", ".join(unforgotten),
            )

    def get(self, request_id: str) -> JobRecord:
        record = self.store.get(request_id)
        if record is None:
            raise RequestNotFound(f"no request {request_id!r}")
        return self._with_next_poll([record])[0]

    def list_jobs(
        self, listing: JobFilter, limit: int, offset: int = 0, cursor: str | None = None
    ) -> JobPage:
        """A page of records, bounded in count (``limit``) and in bytes (MAX_PAGE_BYTES), from
        ``offset`` or past ``cursor`` (the ``next_cursor`` of the page before)."""
        after = None if cursor is None else paging.decode(cursor, listing)
        # Read in small chunks: a thousand records of the largest kind would be 75 MB in memory.
        total = self.store.count(listing, up_to=MAX_COUNTED)
        items: list[JobRecord] = []
        size = 0
        more, full = True, False
        while more and not full and len(items) < limit:
            want = min(PAGE_CHUNK, limit - len(items))
            if items and after is not None:
                after = (items[-1].submitted_at, items[-1].request_id)
            rows = self.store.page(
                listing, want + 1, 0 if after is not None else offset + len(items), after
            )
            more = len(rows) > want
            for record in rows[:want]:
                size += len(record.model_dump_json())
                if items and size > MAX_PAGE_BYTES:
                    more = full = True
                    break
                items.append(record)
        last = items[-1] if items and more else None
        return JobPage(
            items=self._with_next_poll(items),
            total=total,
            limit=limit,
            offset=offset,
            next_offset=offset + len(items) if more and cursor is None else None,
            next_cursor=(
                None
                if last is None
                else paging.encode((last.submitted_at, last.request_id), listing)
            ),
        )

    def _with_next_poll(self, records: list[JobRecord]) -> list[JobRecord]:
        active = [r.request_id for r in records if r.phase in (Phase.POLLING, Phase.PUBLISHING)]
        next_runs = self.scheduler.next_run_times(active)
        return [
            r.model_copy(update={"next_poll_at": next_runs[r.request_id]})
            if r.request_id in next_runs
            else r
            for r in records
        ]

    @log_scope
    def republish(self, request_id: str) -> Republished:
        """Publish a done request's event again, exactly as stored (same ``event_id``, same
        value), for a consumer that lost it; waits for Kafka's ack. A request still in flight
        has no final event yet: its own is on the way."""
        record = self.store.get(request_id)
        if record is None:
            raise RequestNotFound(f"no request {request_id!r}")
        add_log_context(submission_id=record.submission_id, cluster=record.cluster)
        if record.phase != Phase.DONE:
            raise RequestConflict(
                f"request {request_id!r} is still in flight (phase {record.phase.value}): its "
                "event is published once it ends"
            )
        self.outbox.republish(record, REPUBLISH_WAIT_S)
        logger.info("republished the event of %s (%s)", request_id, record.state.value)
        return Republished(
            request_id=request_id, event_id=event_id_for(request_id), state=record.state
        )

    def cancel(self, request_id: str, kill: bool) -> JobRecord:
        """Stop polling and publish a CANCELLED event.

        With ``kill`` Spark is asked to kill the driver first, and the event waits for Spark to
        confirm the driver ended (briefly here, then in the poll job up to a deadline). The
        returned record is in phase ``done`` only once Kafka has the event.
        """
        add_log_context(request_id=request_id)
        with self.poller.lock_for(request_id):
            record = self.store.get(request_id)
            if record is None:
                raise RequestNotFound(f"no request {request_id!r}")
            add_log_context(submission_id=record.submission_id, cluster=record.cluster)
            if kill and record.phase == Phase.SUBMITTING and record.search_until is not None:
                record = self._find_to_kill(record)
            if record.phase == Phase.SUBMITTING and record.search_until is not None:
                looked = "; none carrying its tag was found to kill" if kill else ""
                fixed = self.store.complete(
                    request_id,
                    DriverState.CANCELLED,
                    "cancelled by request while the driver of its create (whose answer was "
                    f"lost) was looked for{looked}: a driver it made, if any, is neither "
                    "tracked nor killed",
                    phase=Phase.SUBMITTING,
                )
                if fixed is None:  # found meanwhile, by another process's search
                    raise RequestConflict(
                        f"request {request_id!r} changed meanwhile (its driver was found): "
                        "cancel it again"
                    )
                record = self.poller.advance(request_id) or fixed
            elif record.phase == Phase.SUBMITTING:
                raise RequestConflict(f"request {request_id!r} is still being submitted")
            elif record.phase == Phase.CANCELLING:
                raise RequestConflict(f"request {request_id!r} is already being cancelled")
            elif record.phase != Phase.POLLING:
                raise RequestConflict(
                    f"request {request_id!r} already ended ({record.state.value})"
                )
            elif not kill or record.submission_id is None:
                record = self.poller.complete(
                    request_id, DriverState.CANCELLED, "cancelled by request"
                )
            else:
                record = self._kill_and_confirm(record)
        if record.phase == Phase.CANCELLING:
            self._tell_leader(request_id)
        if record.phase == Phase.PUBLISHING:
            self.outbox.wait_published(request_id, CANCEL_PUBLISH_WAIT_S)
            record = self.store.get(request_id) or record  # done, if Kafka took it meanwhile
        logger.info(
            "cancel of %s: %s (kill=%s)",
            request_id,
            record.phase.value,
            kill,
            extra={"request_id": request_id},
        )
        return self._with_next_poll([record])[0]

    def _tell_leader(self, request_id: str) -> None:
        """A kill Spark has not confirmed yet: the leader polls it now rather than at its next
        turn (from a standby; the leader's own next poll is soon enough when we lead)."""
        try:
            self.scheduler.changed(request_id)
        except PollerError as exc:
            logger.warning(
                "could not wake the leader for %s (its next poll confirms the kill): %s",
                request_id,
                exc.message,
                extra={"request_id": request_id},
            )

    def _find_to_kill(self, record: JobRecord) -> JobRecord:
        """The request whose driver is looked for, its driver found and tracked (and its state
        read: one that already ended has its own ending), or still looked for once every
        driver that may be it was read. Caller holds the request's lock."""
        record, found = self.poller.search_now(record)
        if record.phase == Phase.POLLING:
            return self.poller.advance(record.request_id) or record
        if found is not None and record.phase == Phase.SUBMITTING and not found.complete:
            raise RequestConflict(
                f"the driver of request {record.request_id!r} (whose create's answer was lost) "
                f"cannot be looked for everywhere yet ({found.summary()}): cancel without "
                "kill, or again later"
            )
        return record

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

    def recover_submissions(self, shards: set[int] | None = None) -> int:
        """Resolve submissions a dead (or stuck) submit call left in SUBMITTING, of ``shards``
        (None: all; each shard's leader resolves its own).

        Only those older than any submit call can last: a younger one may belong to a live
        process (a standby serves submits too) whose create call Spark is still answering."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.submit_grace_s)
        recovered = 0
        with self._pending_lock:
            ours = self._to_record.keys() | self._to_forget | self._submitting
        for record in self.store.submitting_since(cutoff):
            if record.request_id in ours:  # this process is still at it, or writing its outcome
                continue
            if shards is not None and self.scheduler.shard_of(record.request_id) not in shards:
                continue
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
        if recovered:
            logger.warning("resolved %d interrupted submission(s)", recovered)
        return recovered

    def retire(self, stranded: dict[str, list[str]]) -> None:
        """End the requests of retired clusters: nobody will ask their drivers again."""
        for cluster, request_ids in stranded.items():
            for request_id in request_ids:
                with self.poller.lock_for(request_id):
                    self.store.complete(
                        request_id,
                        DriverState.LOST,
                        f"cluster {cluster!r} was retired from this service's configuration "
                        "(POLLER_RETIRED_CLUSTERS); the driver was not followed to its end",
                    )
            logger.warning(
                "retired cluster %r: ended %d request(s) as LOST", cluster, len(request_ids)
            )

    def retry_pending_writes(self) -> None:
        """Finish what submits could not write while the database was away."""
        with self._pending_lock:
            to_record = dict(self._to_record)
            to_forget = set(self._to_forget)
        for request_id, (submission_id, state) in to_record.items():
            self._write_submitted(request_id, submission_id, state)
            with self._pending_lock:
                self._to_record.pop(request_id, None)
            logger.info(
                "recorded driver %s of %s",
                submission_id,
                request_id,
                extra={"request_id": request_id, "submission_id": submission_id},
            )
        for request_id in to_forget:
            self.store.delete_submitting(request_id)
            with self._pending_lock:
                self._to_forget.discard(request_id)
