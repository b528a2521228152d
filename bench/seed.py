"""Fill a database with N requests in flight, as the service would have left them, in seconds.

Adopting 50,000 drivers through ``POST /submit`` takes minutes; the benchmarks that measure what
comes after (steady polling, a restart with a backlog) start from this instead. Rows are written
with the service's own tables and jobs pickled exactly as ``PollScheduler.add`` makes them.
"""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import datetime_to_utc_timestamp
from sqlalchemy import Table, insert
from sqlalchemy.engine import Engine

from poller.jobstore import OwnedJobStore
from poller.models import RequestRow
from poller.service import JOB_FUNC
from poller.shards import jobs_table, shard_of
from poller.store import RequestStore

CHUNK = 5000


def first_runs(n: int, interval_s: float, overdue_s: float) -> list[datetime]:
    """Spread over one interval from now, or, with ``overdue_s``, all that long ago (a service
    that was down)."""
    now = datetime.now(UTC)
    if overdue_s:
        return [now - timedelta(seconds=overdue_s)] * n
    return [now + timedelta(seconds=interval_s * i / max(1, n)) for i in range(n)]


def seed_jobs(
    engine: Engine,
    job_ids: list[str],
    func: str,
    args: list[tuple[str, ...]],
    interval_s: float,
    overdue_s: float = 0.0,
    shards: int = 1,
) -> None:
    """One interval job per id in APScheduler's table (of its shard, out of ``shards``),
    pickled as ``add_job`` pickles them."""
    tables: list[Table] = [OwnedJobStore(engine, jobs_table(i)).jobs_t for i in range(shards)]
    for table in tables:
        table.create(engine, checkfirst=True)
    scheduler = BackgroundScheduler(timezone=UTC)
    times = first_runs(len(job_ids), interval_s, overdue_s)
    for start in range(0, len(job_ids), CHUNK):
        rows: dict[int, list[dict[str, object]]] = {}
        for i in range(start, min(len(job_ids), start + CHUNK)):
            job = Job(
                scheduler,
                id=job_ids[i],
                func=func,
                args=args[i],
                kwargs={},
                name=f"poll {job_ids[i]}",
                trigger=IntervalTrigger(seconds=interval_s, timezone=UTC),
                executor="default",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                next_run_time=times[i],
            )
            rows.setdefault(shard_of(job_ids[i], shards), []).append(
                {
                    "id": job_ids[i],
                    "next_run_time": datetime_to_utc_timestamp(times[i]),
                    "job_state": pickle.dumps(job.__getstate__(), pickle.HIGHEST_PROTOCOL),
                }
            )
        with engine.begin() as conn:
            for shard, shard_rows in rows.items():
                conn.execute(insert(tables[shard]), shard_rows)


def seed(
    engine: Engine,
    submission_ids: list[str],
    interval_s: float,
    overdue_s: float = 0.0,
    cluster: str = "default",
    shards: int = 1,
) -> list[str]:
    """Record one polling request (and its poll job, in its shard's table) per driver; returns
    the request ids."""
    store = RequestStore(engine)
    store.create_schema()
    store.settle_shards(shards)  # before the first request, as a first start would
    now = datetime.now(UTC)
    request_ids = [f"bench-{i:06d}" for i in range(len(submission_ids))]
    requests_t = RequestRow.__table__
    for start in range(0, len(request_ids), CHUNK):
        rows = [
            {
                "request_id": request_ids[i],
                "cluster": cluster,
                "submission_id": submission_ids[i],
                "phase": "polling",
                "state": "RUNNING",
                "spark_state": "RUNNING",  # polled before: a poll that sees RUNNING writes nothing
                "labels": {},
                "polls": 0,
                "unknown_polls": 0,
                "submitted_at": now,
            }
            for i in range(start, min(len(request_ids), start + CHUNK))
        ]
        with engine.begin() as conn:
            conn.execute(insert(requests_t), rows)  # type: ignore[arg-type]
    seed_jobs(
        engine, request_ids, JOB_FUNC, [(r,) for r in request_ids], interval_s, overdue_s, shards
    )
    return request_ids
