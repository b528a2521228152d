"""The APScheduler 3 scheduler: one interval job per request_id, in its shard's SQLAlchemy job
store."""

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
from poller.jobstore import OwnedJobStore, jobs_channel
from poller.metrics import SCHEDULER_LAG_SECONDS
from poller.shards import jobs_table, shard_of

logger = logging.getLogger(__name__)

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
    """Owns the scheduler and one job store per shard; the rest of the service speaks only of
    request ids (and, to lead, of shards)."""

    def __init__(
        self, engine: Engine, job_func: str, interval_s: float, threads: int, shards: int = 1
    ) -> None:
        self.job_func = job_func
        self.interval_s = interval_s
        self.shards = shards
        self.stores = [
            OwnedJobStore(
                engine, jobs_table(shard), channel=jobs_channel(shard), only_owned=shards > 1
            )
            for shard in range(shards)
        ]
        self.scheduler = ResilientScheduler(
            jobstores={_alias(shard): store for shard, store in enumerate(self.stores)},
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

    @property
    def jobstore(self) -> OwnedJobStore:
        """Shard 0's job store (the only one of a store without shards)."""
        return self.stores[0]

    def shard_of(self, request_id: str) -> int:
        return shard_of(request_id, self.shards)

    def _store_of(self, request_id: str) -> tuple[str, OwnedJobStore]:
        shard = self.shard_of(request_id)
        return _alias(shard), self.stores[shard]

    def _chosen(self, shard: int | None) -> list[OwnedJobStore]:
        return self.stores if shard is None else [self.stores[shard]]

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

    def lead(self, shard: int | None = None) -> int:
        """This process owns the job store of ``shard`` (None: every shard) now: hold its jobs
        in memory; returns how many there are. Runs start once :meth:`resume` is called."""
        try:
            return sum(store.own() for store in self._chosen(shard))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc

    def resume(self) -> None:
        """Run the jobs of every owned shard (each loaded and spread by now)."""
        for store in self.stores:
            store.runnable()
        self.scheduler.resume()
        self.scheduler.wakeup()

    def idle(self) -> None:
        """No runs for now (no shard is led), without disowning a store another thread is
        taking the lead of."""
        if self.scheduler.state != STATE_STOPPED:
            self.scheduler.pause()

    def hand_over(self, shard: int) -> None:
        """Stop running the jobs of ``shard`` and write their next run times, so that the
        process taking it next runs each on time; the other shards go on."""
        store = self.stores[shard]
        with self.scheduler._jobstores_lock:  # once a pass over due jobs is done with it
            store.hold_runs()
        try:
            store.save_times()  # the bulk, while the other shards' passes go on
            store.hand_off()  # what a wake changed since, then no more
        except SQLAlchemyError as exc:
            logger.warning(
                "next run times of shard %d not saved at hand-over: %s", shard, type(exc).__name__
            )
            store.disown()

    def drop(self, shard: int) -> None:
        """Stop running the jobs of ``shard`` at once and write nothing more for it: another
        process may own it now (its lease was lost). The other shards go on."""
        self.stores[shard].disown()

    def owned(self) -> list[int]:
        """The shards whose jobs this process runs."""
        return [shard for shard, store in enumerate(self.stores) if store.owned]

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
        alias, store = self._store_of(request_id)
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
        job._jobstore_alias = alias
        write = JobWrite(store, job)
        yield write
        if write.written:
            store.hold(job)
            self.scheduler.wakeup()

    def add(self, request_id: str, first_run_at: datetime | None = None) -> bool:
        """Register the poll job of ``request_id``; False if it already exists."""
        alias, _ = self._store_of(request_id)
        try:
            self.scheduler.add_job(
                self.job_func,
                trigger="interval",
                seconds=self.interval_s,
                args=(request_id,),
                id=request_id,
                name=f"poll {request_id}",
                jobstore=alias,
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
            self._store_of(request_id)[1].tell_owner("added", request_id)
        except SQLAlchemyError as exc:  # it finds the row at its next look at the table
            logger.warning(
                "could not tell the leader of job %s: %s", request_id, type(exc).__name__
            )
        return True

    def spread_overdue(
        self, window_s: float, stored_before: datetime | None = None, shard: int | None = None
    ) -> int:
        """Move every overdue job (of ``shard``, None: every owned one) to a run time within the
        next ``window_s``; returns how many.

        Called before the scheduler resumes after downtime. APScheduler 3 would otherwise build
        every missed run time of each overdue job (a day at 1 s is 86,400 per job) under its
        job-store lock, and run them all in the same second: spread, the master is asked about
        the backlog no faster than in steady state.

        A job that was due less than one interval before ``stored_before`` (when this process
        loaded the store) may have run just before its last owner died, its new time not yet
        written (times are saved a second later): it runs one interval after the stored time,
        never twice in one interval. Jobs made due since (a reconcile's) are only spread."""
        now = datetime.now(UTC)
        interval = timedelta(seconds=self.interval_s)
        moved = 0
        for store in self._chosen(shard):
            overdue = store.overdue(now)
            for job in overdue:
                due: datetime = job.next_run_time
                if stored_before is not None and stored_before - interval < due < stored_before:
                    at = due + interval
                else:
                    at = now + timedelta(seconds=random.uniform(0, window_s))
                job._modify(next_run_time=at)
                store.update_job(job)
            moved += len(overdue)
        return moved

    def notified(self, payloads: list[str], shard: int = 0) -> None:
        """Other processes added or changed jobs of ``shard`` (NOTIFY payloads): load or wake
        them now."""
        woken = self.stores[shard].notified(payloads)
        self.wake(woken)
        self.scheduler.wakeup()

    def changed(self, request_id: str) -> None:
        """A request changed here and its job must run now where it is owned (a standby's
        cancel): tell the owner; nothing to do when this process owns it."""
        _, store = self._store_of(request_id)
        try:
            store.tell_owner("changed", request_id)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc

    def remove(self, request_id: str, shard: int | None = None) -> None:
        """Remove the poll job of ``request_id`` from the table of ``shard`` (None: the shard
        it hashes to); a job already gone is fine.

        Once the scheduler stops, nothing is removed: the next start drops the jobs of requests
        that are done (reconcile), and a stop never waits on the job store."""
        if self.scheduler.state == STATE_STOPPED:
            return
        alias = self._store_of(request_id)[0] if shard is None else _alias(shard)
        with contextlib.suppress(JobLookupError):
            self.scheduler.remove_job(request_id, jobstore=alias)

    def wake(self, request_ids: list[str]) -> None:
        """Run the poll jobs of ``request_ids`` now rather than at their next turn (those of
        shards this process runs)."""
        now = datetime.now(UTC)
        for request_id in request_ids:
            alias, store = self._store_of(request_id)
            if not store.owned:
                continue
            with contextlib.suppress(JobLookupError):
                self.scheduler.modify_job(request_id, jobstore=alias, next_run_time=now)

    def remove_many(self, request_ids: list[str]) -> None:
        """Remove the poll jobs of ``request_ids``, one transaction per shard (see
        :meth:`remove`)."""
        if self.scheduler.state == STATE_STOPPED or not request_ids:
            return
        by_shard: dict[int, list[str]] = {}
        for request_id in request_ids:
            by_shard.setdefault(self.shard_of(request_id), []).append(request_id)
        try:
            for shard, ids in sorted(by_shard.items()):
                self.scheduler.remove_jobs(ids, self.stores[shard])
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc

    def job_ids(self, shard: int | None = None) -> set[str]:
        """Ids of every loadable stored job (APScheduler deletes rows it cannot unpickle)."""
        return {job.id for store in self._chosen(shard) for job in store.get_all_jobs()}

    def stored_ids(self, shard: int | None = None) -> set[str]:
        """Ids of every stored job row, read straight from the tables (cheap; no unpickling)."""
        ids: set[str] = set()
        try:
            with self.jobstore.engine.connect() as conn:
                for store in self._chosen(shard):
                    ids.update(conn.scalars(select(store.jobs_t.c.id)))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        return ids

    def store_stats(self) -> tuple[int, datetime | None]:
        """How many jobs the store holds, and the earliest next run time among them."""
        count = 0
        earliest: datetime | None = None
        for store in self.stores:
            held = store.stats()
            if held is None:
                held = self._table_stats(store)
            count += held[0]
            if held[1] is not None and (earliest is None or held[1] < earliest):
                earliest = held[1]
        return count, earliest

    @staticmethod
    def _table_stats(store: OwnedJobStore) -> tuple[int, datetime | None]:
        table = store.jobs_t
        query = select(func.count(), func.min(table.c.next_run_time))
        try:
            with store.engine.connect() as conn:
                count, earliest = conn.execute(query).one()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        return int(count), None if earliest is None else datetime.fromtimestamp(earliest, UTC)

    def next_run_times(self, request_ids: Iterable[str]) -> dict[str, datetime]:
        """Next poll time of each given request that has a job, from memory for the shards this
        process runs, else from their tables."""
        by_shard: dict[int, list[str]] = {}
        for request_id in request_ids:
            by_shard.setdefault(self.shard_of(request_id), []).append(request_id)
        found: dict[str, datetime] = {}
        for shard, ids in by_shard.items():
            store = self.stores[shard]
            held = store.next_run_times(ids)
            found.update(held if held is not None else self._table_times(store, ids))
        return found

    @staticmethod
    def _table_times(store: OwnedJobStore, ids: list[str]) -> dict[str, datetime]:
        table = store.jobs_t
        query = select(table.c.id, table.c.next_run_time).where(table.c.id.in_(ids))
        try:
            with store.engine.connect() as conn:
                rows: list[Any] = list(conn.execute(query))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        return {
            row.id: datetime.fromtimestamp(row.next_run_time, UTC)
            for row in rows
            if row.next_run_time is not None
        }


def _alias(shard: int) -> str:
    """APScheduler's name of a shard's job store (shard 0 keeps the stock name)."""
    return "default" if shard == 0 else f"shard-{shard}"
