"""APScheduler's SQLAlchemy job store, built for a store that one scheduler owns (the lease).

The stock store reads, unpickles, re-pickles and commits a job's row on every run: past a few
thousand jobs that bookkeeping costs more than the polls themselves. The lease makes this process
the only one that schedules, so once it leads it can keep every job in memory:

- adds and removes are written through at once (durable before the API answers);
- a run's new next-run-time lands in memory and is written, with every other changed one, in one
  batched UPDATE a second later (a time lost in a crash only makes that poll come early: the
  start-up spreads overdue polls over one interval);
- an unchanged job is never pickled again.

Other processes (standbys serving the API) still add and remove rows. On PostgreSQL they say so
on a NOTIFY channel in the same transaction, and the owner loads (or wakes) that job at once; a
background pass also notices rows it does not hold and loads them (every second on SQLite, every
``RESCAN_S`` as a safety net on PostgreSQL). A removed row's job goes away at its next run (the
poll finds its request done and removes it).

Until :meth:`own` is called, and after :meth:`disown`, the store is the stock table-backed one.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import pickle
import threading
import time
from datetime import datetime
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.util import datetime_to_utc_timestamp, utc_timestamp_to_datetime
from sqlalchemy import Connection, Engine, bindparam, func, select

logger = logging.getLogger(__name__)

SYNC_INTERVAL_S = 1.0
RESCAN_S = 15.0  # full look for rows added elsewhere, where NOTIFY says so at once
CHANNEL = "spark_poller_jobs"  # NOTIFY payloads: "added:<job id>" or "changed:<job id>"
LOAD_CHUNK = 500
SAVE_CHUNK = 250  # next run times per transaction: the writer held a few ms, whatever the backlog
FAILURE_REPEAT_S = 60.0


class OwnedJobStore(SQLAlchemyJobStore):  # type: ignore[misc]
    """Jobs in memory while this process owns the store; rows kept for restarts and standbys."""

    def __init__(
        self,
        engine: Engine,
        tablename: str,
        sync_interval_s: float = SYNC_INTERVAL_S,
        channel: str = CHANNEL,
        only_owned: bool = False,
    ) -> None:
        """``only_owned``: unowned, hand the scheduler nothing to run (one of several shards,
        another process runs it); otherwise unowned is the stock table-backed store."""
        super().__init__(engine=engine, tablename=tablename)
        self.sync_interval_s = sync_interval_s
        self.channel = channel
        self.only_owned = only_owned
        self.notifies = engine.dialect.name == "postgresql"
        self.rescan_s = RESCAN_S if self.notifies else sync_interval_s
        # Guards everything below; held across a write-through so memory and rows agree.
        self._lock = threading.RLock()
        self._owned = False
        self._runnable = False
        self._jobs: dict[str, Job] = {}
        self._times: dict[str, float | None] = {}
        # (next run timestamp, id); an entry whose time no longer matches _times is stale.
        self._heap: list[tuple[float, str]] = []
        self._unsaved: dict[str, float | None] = {}  # next run times not yet written
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self._generation = 0  # bumped at each own() and disown()
        self._last_failure: dict[str, float] = {}
        self._update_time = (
            self.jobs_t.update()
            .where(self.jobs_t.c.id == bindparam("job_id"))
            .values(next_run_time=bindparam("time"))
        )

    # -- ownership -------------------------------------------------------------------------------

    @property
    def owned(self) -> bool:
        return self._owned

    def own(self) -> int:
        """Load every job into memory and keep it there; returns how many were loaded."""
        with self._lock:
            self._jobs.clear()
            self._times.clear()
            self._heap.clear()
            self._unsaved.clear()
            loaded = self._load(None)
            self._owned = True
            self._runnable = False  # until the caller has spread what is overdue (runnable())
            self._generation += 1
            generation = self._generation
        # A thread of each ownership, with a stop of its own: one of an earlier ownership still
        # inside a database call (the lease was lost meanwhile) never writes for this one.
        self._stop = threading.Event()
        self._syncer = threading.Thread(
            target=self._sync_loop, args=(self._stop, generation), name="jobstore-sync", daemon=True
        )
        self._syncer.start()
        return loaded

    def disown(self) -> None:
        """Another process may own the store now: forget memory, write nothing more."""
        self._stop.set()
        with self._lock:
            self._generation += 1
            self._owned = False
            self._jobs.clear()
            self._times.clear()
            self._heap.clear()
            self._unsaved.clear()

    def shutdown(self) -> None:
        """Write the unsaved next run times (a clean stop keeps the schedule), then stop."""
        self._stop.set()
        if self._owned:
            try:
                self.save_times()
            except Exception as exc:
                logger.warning("next run times not saved at stop: %s", type(exc).__name__)
        with self._lock:
            self._owned = False
        super().shutdown()

    # -- the job store interface -----------------------------------------------------------------

    def lookup_job(self, job_id: str) -> Job | None:
        with self._lock:
            if self._owned:
                return self._jobs.get(job_id)
        return super().lookup_job(job_id)

    def runnable(self) -> None:
        """Owned and ready: from now on the scheduler gets its due jobs."""
        with self._lock:
            self._runnable = self._owned

    def hand_off(self) -> None:
        """Write the run times not yet written and disown, with nothing changing in between (a
        wake right before would otherwise be lost)."""
        with self._lock:
            self.save_times()
            self.disown()

    def hold_runs(self) -> None:
        """Still owned, but the scheduler gets none of its jobs any more (it is being handed
        over: its times are written next)."""
        with self._lock:
            self._runnable = False

    def get_due_jobs(self, now: datetime) -> list[Job]:
        with self._lock:
            if not self._owned:
                return [] if self.only_owned else list(super().get_due_jobs(now))
            if not self._runnable:
                return []
            return self.overdue(now)

    def overdue(self, now: datetime) -> list[Job]:
        """Jobs due by ``now`` while owned, whether or not the scheduler may run them yet (the
        taking process spreads them first)."""
        with self._lock:
            if not self._owned:
                return []
            limit = datetime_to_utc_timestamp(now)
            popped: dict[str, float] = {}
            heap = self._heap
            while heap and heap[0][0] <= limit:
                stamp, job_id = heapq.heappop(heap)
                if self._times.get(job_id) == stamp:
                    popped[job_id] = stamp
            # Kept findable until the caller updates them (it may not: then they stay due).
            for job_id, stamp in popped.items():
                heapq.heappush(heap, (stamp, job_id))
            return [self._jobs[job_id] for job_id in popped]

    def get_next_run_time(self) -> datetime | None:
        with self._lock:
            if not self._owned:
                return None if self.only_owned else super().get_next_run_time()
            if not self._runnable:  # nothing to hand out yet: no wake-up for it
                return None
            heap = self._heap
            while heap and self._times.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)
            return utc_timestamp_to_datetime(heap[0][0]) if heap else None

    def get_all_jobs(self) -> list[Job]:
        with self._lock:
            if not self._owned:
                return list(super().get_all_jobs())
            jobs = sorted(self._jobs.values(), key=lambda j: self._times[j.id] or float("inf"))
        return jobs

    def add_job(self, job: Job) -> None:
        with self._lock:
            if self._owned and job.id in self._jobs:
                raise ConflictingIdError(job.id)
            super().add_job(job)  # the row first: durable before anyone is told it exists
            if self._owned:
                self._hold(job, datetime_to_utc_timestamp(job.next_run_time))

    def update_job(self, job: Job) -> None:
        with self._lock:
            if not self._owned:
                super().update_job(job)
                return
            if job.id not in self._jobs:
                raise JobLookupError(job.id)
            # Only the next run time changes once a job is stored (its trigger and arguments
            # never do here): memory now, the row with the next batch.
            stamp = datetime_to_utc_timestamp(job.next_run_time)
            self._hold(job, stamp)
            self._unsaved[job.id] = stamp

    def remove_job(self, job_id: str) -> None:
        with self._lock:
            if not self._owned:
                super().remove_job(job_id)
                return
            held = self._jobs.pop(job_id, None)
            self._times.pop(job_id, None)
            self._unsaved.pop(job_id, None)
            try:
                super().remove_job(job_id)
            except JobLookupError:
                if held is None:
                    raise
                # Its row was removed by another process (a standby serving a cancel).
            except BaseException:
                if held is not None:  # the row is still there: so is the job
                    self._hold(held, datetime_to_utc_timestamp(held.next_run_time))
                raise

    def remove_jobs(self, job_ids: list[str]) -> None:
        """Remove many jobs in one transaction; ids without a job are fine."""
        table = self.jobs_t
        with self._lock:
            with self.engine.begin() as conn:
                for chunk in _chunks(job_ids, LOAD_CHUNK):
                    conn.execute(table.delete().where(table.c.id.in_(chunk)))
            for job_id in job_ids:
                self._jobs.pop(job_id, None)
                self._times.pop(job_id, None)
                self._unsaved.pop(job_id, None)

    def remove_all_jobs(self) -> None:
        with self._lock:
            super().remove_all_jobs()
            self._jobs.clear()
            self._times.clear()
            self._heap.clear()
            self._unsaved.clear()

    # -- a job written in the caller's transaction -----------------------------------------------

    def row(self, job: Job) -> dict[str, Any]:
        """``job``'s row, made before a transaction so that it holds no lock while pickling."""
        return {
            "id": job.id,
            "next_run_time": datetime_to_utc_timestamp(job.next_run_time),
            "job_state": pickle.dumps(job.__getstate__(), self.pickle_protocol),
        }

    def write(self, conn: Connection, row: dict[str, Any]) -> None:
        """Write a job's :meth:`row` in ``conn``'s transaction (replacing a stale row of that
        id); :meth:`hold` the job once that transaction committed."""
        table = self.jobs_t
        conn.execute(table.delete().where(table.c.id == row["id"]))
        conn.execute(table.insert(), row)
        if not self._owned:
            self._notify(conn, "added", row["id"])

    def _notify(self, conn: Connection, what: str, job_id: str) -> None:
        """Tell the owner (on commit of ``conn``'s transaction, if it commits)."""
        if self.notifies:
            conn.execute(select(func.pg_notify(self.channel, f"{what}:{job_id}")))

    def tell_owner(self, what: str, job_id: str) -> None:
        """Say to the owner that a job was "added" here (it loads it) or that its request
        "changed" here (a cancel through a standby: it runs the job at once). Nothing to say
        when we own the store."""
        if self._owned or not self.notifies:
            return
        with self.engine.begin() as conn:
            self._notify(conn, what, job_id)

    def notified(self, payloads: list[str]) -> list[str]:
        """Load the jobs other processes said they added; returns the ids of those they said
        changed that we hold (for the caller to wake)."""
        added: set[str] = set()
        changed: list[str] = []
        for payload in payloads:
            what, _, job_id = payload.partition(":")
            if what == "added":
                added.add(job_id)
            elif what == "changed":
                changed.append(job_id)
        with self._lock:
            if not self._owned:
                return []
            new = added - self._jobs.keys()
            if new:
                self._load(new)
            return [job_id for job_id in changed if job_id in self._jobs]

    def hold(self, job: Job) -> None:
        """Schedule a job whose row a committed transaction wrote (while owned)."""
        with self._lock:
            if self._owned:
                self._hold(job, datetime_to_utc_timestamp(job.next_run_time))
                self._unsaved.pop(job.id, None)

    # -- what the service reads ------------------------------------------------------------------

    def next_run_times(self, job_ids: list[str]) -> dict[str, datetime] | None:
        """Next run of each given job that has one, from memory; None when not owned."""
        with self._lock:
            if not self._owned:
                return None
            return {
                job_id: utc_timestamp_to_datetime(stamp)
                for job_id in job_ids
                if (stamp := self._times.get(job_id)) is not None
            }

    def stats(self) -> tuple[int, datetime | None] | None:
        """(jobs held, earliest next run) from memory; None when not owned."""
        with self._lock:
            if not self._owned:
                return None
            earliest = self.get_next_run_time()
            return len(self._jobs), earliest

    def save_times(self, generation: int | None = None) -> int:
        """Write the next run times changed since the last save, a bounded batch per
        transaction; only while ``generation`` (default: the current one) owns the store."""
        saved = 0
        while True:
            with self._lock:
                if not self._owned or generation not in (None, self._generation):
                    return saved
                ids = list(itertools.islice(self._unsaved, SAVE_CHUNK))
                batch = {job_id: self._unsaved.pop(job_id) for job_id in ids}
            if not batch:
                return saved
            rows = [{"job_id": job_id, "time": stamp} for job_id, stamp in batch.items()]
            try:
                with self.engine.begin() as conn:
                    conn.execute(self._update_time, rows)
            except BaseException:
                with self._lock:  # newer times recorded meanwhile win
                    self._unsaved = {**batch, **self._unsaved}
                raise
            saved += len(rows)

    def sync(self) -> int:
        """Load jobs that another process added since; returns how many."""
        if not self._owned:
            return 0
        with self.engine.connect() as conn:
            stored = set(conn.scalars(select(self.jobs_t.c.id)))
        with self._lock:
            if not self._owned:
                return 0
            new = stored - self._jobs.keys()
            return self._load(new) if new else 0

    # -- inside ----------------------------------------------------------------------------------

    def _hold(self, job: Job, stamp: float | None) -> None:
        self._jobs[job.id] = job
        self._times[job.id] = stamp
        if stamp is not None:
            heapq.heappush(self._heap, (stamp, job.id))

    def _load(self, job_ids: set[str] | None) -> int:
        """Read rows (all, or those of ``job_ids``) into memory, with each row's own next run
        time (the pickled one is the time it was added). Rows that do not unpickle are deleted,
        as the stock store does."""
        table = self.jobs_t
        query = select(table.c.id, table.c.next_run_time, table.c.job_state)
        chunks = [None] if job_ids is None else _chunks(sorted(job_ids), LOAD_CHUNK)
        loaded = 0
        broken: list[str] = []
        with self.engine.connect() as conn:
            for chunk in chunks:
                selected = query if chunk is None else query.where(table.c.id.in_(chunk))
                for row in conn.execute(selected):
                    if row.id in self._jobs:
                        continue
                    try:
                        job: Job = self._reconstitute_job(row.job_state)
                    except Exception:
                        logger.exception("unable to restore job %r: removing it", row.id)
                        broken.append(row.id)
                        continue
                    job.next_run_time = (
                        None
                        if row.next_run_time is None
                        else utc_timestamp_to_datetime(row.next_run_time)
                    )
                    self._hold(job, row.next_run_time)
                    loaded += 1
        if broken:
            with self.engine.begin() as conn:
                conn.execute(table.delete().where(table.c.id.in_(broken)))
        return loaded

    def _sync_loop(self, stop: threading.Event, generation: int) -> None:
        """Save next run times once a ``sync_interval_s``, and pick up others' additions once a
        ``rescan_s``; each on its own, so that one failing never holds up the other."""
        next_rescan = time.monotonic() + self.rescan_s
        while not stop.wait(self.sync_interval_s):
            try:
                self.save_times(generation)
            except Exception as exc:
                self._failed("saving next run times", exc)
            if time.monotonic() < next_rescan:
                continue
            next_rescan = time.monotonic() + self.rescan_s
            try:
                if self.sync() and self._scheduler is not None:
                    self._scheduler.wakeup()
            except Exception as exc:
                self._failed("loading jobs added by other processes", exc)

    def _failed(self, step: str, exc: Exception) -> None:
        """Log a failing step once a minute, not once a second."""
        now = time.monotonic()
        if self._last_failure.get(step, float("-inf")) + FAILURE_REPEAT_S <= now:
            self._last_failure[step] = now
            logger.warning("job store: %s failed, retrying: %s", step, type(exc).__name__)


def jobs_channel(shard: int) -> str:
    """The NOTIFY channel of ``shard``'s job store."""
    return CHANNEL if shard == 0 else f"{CHANNEL}_{shard}"


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
