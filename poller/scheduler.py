"""The APScheduler 3 scheduler: one interval job per request_id in a SQLAlchemy job store."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_PAUSED, STATE_STOPPED
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from poller.errors import StoreUnavailable
from poller.jobstore import OwnedJobStore
from poller.metrics import SCHEDULER_LAG_SECONDS

logger = logging.getLogger(__name__)

JOBS_TABLE = "apscheduler_jobs"
STORE_RETRY_S = 2.0
MAX_WAIT_S = 1.0


class ResilientScheduler(BackgroundScheduler):  # type: ignore[misc]
    """A BackgroundScheduler whose thread survives job-store errors.

    APScheduler 3 only guards ``get_due_jobs``: an error from ``update_job`` (say, the database went
    away mid-loop) escapes ``_process_jobs`` and silently ends the scheduler thread. Its
    ``shutdown`` also wakes the thread for one last pass over the store after the executors are
    gone, which may delete rows it cannot unpickle and tries to submit due jobs; we skip that pass.
    """

    def shutdown(self, wait: bool = True) -> None:
        """Wait for running jobs without holding the job-store lock.

        APScheduler 3 waits for its pools while holding that lock, and a job that ends meanwhile
        and removes itself (``remove_job`` takes the same lock) deadlocks the stop for good."""
        if self.state != STATE_STOPPED:
            self.pause()
            for executor in list(self._executors.values()):
                executor.shutdown(wait)
        super().shutdown(wait=False)

    def remove_jobs(self, job_ids: list[str], jobstore: OwnedJobStore) -> None:
        """Remove many jobs at once, under the same lock as a pass over the due jobs, so a
        removal always comes after the pass has written the job's next run time."""
        with self._jobstores_lock:
            jobstore.remove_jobs(job_ids)

    def _process_jobs(self) -> float | None:
        if self.state == STATE_STOPPED:
            return None
        try:
            wait_s: float | None = super()._process_jobs()
        except JobLookupError as exc:
            # Another process (a standby serving a cancel) removed a job this pass was running:
            # nothing is wrong; finish the pass now rather than after the store-error pause.
            logger.debug("a job went away during a scheduler pass: %s", exc)
            return 0
        except Exception:
            logger.exception(
                "job store error in the scheduler loop; retrying in %.0fs", STORE_RETRY_S
            )
            return STORE_RETRY_S
        if self.state == STATE_PAUSED:
            return wait_s
        # Another process (a standby serving the API) may add jobs: look at the store now and then.
        return MAX_WAIT_S if wait_s is None else min(wait_s, MAX_WAIT_S)


class _LagTimingPool(concurrent.futures.ThreadPoolExecutor):
    """Observes how late each run starts on its worker thread.

    The scheduler hands a due run over on time, but the run waits in this pool's queue while every
    thread is busy: only its start says how late the poll really is. APScheduler 3's pool
    executor calls ``submit(run_job, job, jobstore_alias, run_times, logger_name)``."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        run_times = args[2] if len(args) > 2 else None
        if not run_times:
            return super().submit(fn, *args, **kwargs)
        due: datetime = run_times[-1]

        def started() -> Any:
            lag_s = (datetime.now(UTC) - due).total_seconds()
            SCHEDULER_LAG_SECONDS.observe(max(0.0, lag_s))
            return fn(*args, **kwargs)

        return super().submit(started)


class TimedPoolExecutor(BasePoolExecutor):  # type: ignore[misc]
    """APScheduler's thread pool executor, with the lag of every run measured."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(_LagTimingPool(max_workers, thread_name_prefix="poll"))


class JobWrite:
    """Writes one poll job's row in a transaction of the caller's (see PollScheduler.adding)."""

    def __init__(self, jobstore: OwnedJobStore, job: Job) -> None:
        self.jobstore = jobstore
        self.row = jobstore.row(job)
        self.written = False

    def __call__(self, conn: Connection) -> None:
        self.jobstore.write(conn, self.row)
        self.written = True


class PollScheduler:
    """Owns the scheduler; the rest of the service speaks only of request ids."""

    def __init__(self, engine: Engine, job_func: str, interval_s: float, threads: int) -> None:
        self.job_func = job_func
        self.interval_s = interval_s
        self.jobstore = OwnedJobStore(engine, JOBS_TABLE)
        self.scheduler = ResilientScheduler(
            jobstores={"default": self.jobstore},
            executors={"default": TimedPoolExecutor(max_workers=threads)},
            job_defaults={
                "max_instances": 1,
                "coalesce": True,
                # None: run however late; the default (1 s) skips the first run after downtime.
                "misfire_grace_time": None,
            },
            timezone=UTC,
            jobstore_retry_interval=STORE_RETRY_S,
        )
        self.scheduler.add_listener(self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED)

    @staticmethod
    def _on_job_event(event: JobExecutionEvent) -> None:
        if event.exception is not None:
            logger.error(
                "poll job %s raised: %r",
                event.job_id,
                event.exception,
                extra={"request_id": event.job_id},
            )
        else:
            logger.warning(
                "poll job %s missed its run at %s",
                event.job_id,
                event.scheduled_run_time,
                extra={"request_id": event.job_id},
            )

    def start(self) -> None:
        """Start paused, so the caller can reconcile before any job runs, then :meth:`resume`."""
        self.scheduler.start(paused=True)

    def lead(self) -> int:
        """This process owns the job store now: hold every job in memory (still paused);
        returns how many jobs there are."""
        try:
            return self.jobstore.own()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc

    def resume(self) -> None:
        self.scheduler.resume()

    def pause(self) -> None:
        """No new runs from now on (runs already handed to a thread finish), and no more
        writes of run times: another process may own the job store from now on."""
        if self.scheduler.state != STATE_STOPPED:
            self.scheduler.pause()
        self.jobstore.disown()

    def alive(self) -> bool:
        thread = getattr(self.scheduler, "_thread", None)
        return thread is not None and bool(thread.is_alive())

    def shutdown(self, wait: bool = True) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=wait)

    @contextlib.contextmanager
    def adding(self, request_id: str, first_run_at: datetime | None = None) -> Iterator[JobWrite]:
        """Register the poll job of ``request_id`` in the caller's transaction.

        Yields the write to make in that transaction; once the block ends without error (the
        transaction committed), a job that was written is scheduled. One commit makes both the
        request and its job durable."""
        job = Job(
            self.scheduler,
            id=request_id,
            func=self.job_func,
            args=(request_id,),
            kwargs={},
            name=f"poll {request_id}",
            trigger=IntervalTrigger(seconds=self.interval_s, timezone=UTC),
            executor="default",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=first_run_at or datetime.now(UTC) + timedelta(seconds=self.interval_s),
        )
        job._jobstore_alias = "default"
        write = JobWrite(self.jobstore, job)
        yield write
        if write.written:
            self.jobstore.hold(job)
            self.scheduler.wakeup()

    def add(self, request_id: str, first_run_at: datetime | None = None) -> bool:
        """Register the poll job of ``request_id``; False if it already exists."""
        try:
            self.scheduler.add_job(
                self.job_func,
                trigger="interval",
                seconds=self.interval_s,
                args=(request_id,),
                id=request_id,
                name=f"poll {request_id}",
                next_run_time=first_run_at
                or datetime.now(UTC) + timedelta(seconds=self.interval_s),
            )
        except ConflictingIdError:
            return False
        except Exception as exc:
            raise StoreUnavailable(
                f"could not register the poll job: {type(exc).__name__}"
            ) from exc
        try:
            self.jobstore.tell_owner("added", request_id)
        except SQLAlchemyError as exc:  # it finds the row at its next look at the table
            logger.warning(
                "could not tell the leader of job %s: %s", request_id, type(exc).__name__
            )
        return True

    def spread_overdue(self, window_s: float, stored_before: datetime | None = None) -> int:
        """Move every overdue job to a run time within the next ``window_s``; returns how many.

        Called before the scheduler resumes after downtime. APScheduler 3 would otherwise build
        every missed run time of each overdue job (a day at 1 s is 86,400 per job) under its
        job-store lock, and run them all in the same second: spread, the master is asked about
        the backlog no faster than in steady state.

        A job that was due less than one interval before ``stored_before`` (when this process
        loaded the store) may have run just before its last owner died, its new time not yet
        written (times are saved a second later): it runs one interval after the stored time,
        never twice in one interval. Jobs made due since (a reconcile's) are only spread."""
        now = datetime.now(UTC)
        overdue = self.jobstore.get_due_jobs(now)
        interval = timedelta(seconds=self.interval_s)
        for job in overdue:
            due: datetime = job.next_run_time
            if stored_before is not None and stored_before - interval < due < stored_before:
                at = due + interval
            else:
                at = now + timedelta(seconds=random.uniform(0, window_s))
            job._modify(next_run_time=at)
            self.jobstore.update_job(job)
        return len(overdue)

    def notified(self, payloads: list[str]) -> None:
        """Other processes added or changed jobs (NOTIFY payloads): load or wake them now."""
        woken = self.jobstore.notified(payloads)
        self.wake(woken)
        self.scheduler.wakeup()

    def changed(self, request_id: str) -> None:
        """A request changed here and its job must run now where it is owned (a standby's
        cancel): tell the owner; nothing to do when this process owns it."""
        try:
            self.jobstore.tell_owner("changed", request_id)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc

    def remove(self, request_id: str) -> None:
        """Remove the poll job of ``request_id``; a job already gone is fine.

        Once the scheduler stops, nothing is removed: the next start drops the jobs of requests
        that are done (reconcile), and a stop never waits on the job store."""
        if self.scheduler.state == STATE_STOPPED:
            return
        with contextlib.suppress(JobLookupError):
            self.scheduler.remove_job(request_id)

    def wake(self, request_ids: list[str]) -> None:
        """Run the poll jobs of ``request_ids`` now rather than at their next turn."""
        now = datetime.now(UTC)
        for request_id in request_ids:
            with contextlib.suppress(JobLookupError):
                self.scheduler.modify_job(request_id, next_run_time=now)

    def remove_many(self, request_ids: list[str]) -> None:
        """Remove the poll jobs of ``request_ids`` in one transaction (see :meth:`remove`)."""
        if self.scheduler.state == STATE_STOPPED or not request_ids:
            return
        try:
            self.scheduler.remove_jobs(request_ids, self.jobstore)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc

    def job_ids(self) -> set[str]:
        """Ids of every loadable stored job (APScheduler deletes rows it cannot unpickle)."""
        return {job.id for job in self.jobstore.get_all_jobs()}

    def stored_ids(self) -> set[str]:
        """Ids of every stored job row, read straight from the table (cheap; no unpickling)."""
        table = self.jobstore.jobs_t
        try:
            with self.jobstore.engine.connect() as conn:
                return set(conn.scalars(select(table.c.id)))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc

    def store_stats(self) -> tuple[int, datetime | None]:
        """How many jobs the store holds, and the earliest next run time among them."""
        held = self.jobstore.stats()
        if held is not None:
            return held
        table = self.jobstore.jobs_t
        query = select(func.count(), func.min(table.c.next_run_time))
        try:
            with self.jobstore.engine.connect() as conn:
                count, earliest = conn.execute(query).one()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        return int(count), None if earliest is None else datetime.fromtimestamp(earliest, UTC)

    def next_run_times(self, request_ids: Iterable[str]) -> dict[str, datetime]:
        """Next poll time of each given request that has a job, read from the job table."""
        ids = list(request_ids)
        if not ids:
            return {}
        held = self.jobstore.next_run_times(ids)
        if held is not None:
            return held
        table = self.jobstore.jobs_t
        query = select(table.c.id, table.c.next_run_time).where(table.c.id.in_(ids))
        try:
            with self.jobstore.engine.connect() as conn:
                rows: list[Any] = list(conn.execute(query))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        return {
            row.id: datetime.fromtimestamp(row.next_run_time, UTC)
            for row in rows
            if row.next_run_time is not None
        }
