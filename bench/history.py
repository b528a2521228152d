"""History on a million requests: listing pages by cursor beside offset paging, and the
retention's purge beside the poll path's writes.

For each database (SQLite file, PostgreSQL) the store is filled with ``--rows`` finished requests
(one in a thousand FAILED, the rest FINISHED) and a thousand in flight, then, through the same
calls ``GET /jobs`` makes (count capped at 10,000, then 100-record pages):

- first page; a deep page (the middle of the history) by cursor, beside the same page by offset
  (the baseline); a page of a rare state, and of a one-hour window;
- the purge (``POLLER_RETENTION_DAYS``) of the older half in its batches of 1,000: rows deleted per
  second, and the latency of the poll path's writes (a state change of a request in flight)
  while it runs, beside the same writes with no purge (the baseline).

    python bench/history.py [--rows 1000000] [--only sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from poller import paging
from poller.db import create_db_engine
from poller.devstack import Postgres
from poller.jobs import MAX_COUNTED
from poller.models import RequestRow
from poller.retention import Retention
from poller.schemas import DriverState, DriverStatus, JobFilter, JobRecord, Phase
from poller.store import RequestStore

CHUNK = 20_000
IN_FLIGHT = 1000
PAGE = 100
REPEAT = 30
START = datetime(2026, 1, 1, tzinfo=UTC)


def fill(engine: sa.Engine, rows: int) -> None:
    """``rows`` finished requests a second apart from START (the older half before the cutoff
    the purge uses), and IN_FLIGHT polling ones."""
    for begin in range(0, rows, CHUNK):
        batch = []
        for i in range(begin, min(rows, begin + CHUNK)):
            at = START + timedelta(seconds=i)
            batch.append(
                {
                    "request_id": f"h-{i:07d}",
                    "cluster": "default",
                    "submission_id": f"driver-20260101000000-{i:07d}",
                    "phase": Phase.DONE.value,
                    "state": (DriverState.FAILED if i % 1000 == 7 else DriverState.FINISHED).value,
                    "labels": {"team": "ingest"},
                    "polls": 3,
                    "unknown_polls": 0,
                    "submitted_at": at,
                    "completed_at": at + timedelta(seconds=40),
                    "published_at": at + timedelta(seconds=41),
                }
            )
        with engine.begin() as conn:
            conn.execute(sa.insert(RequestRow), batch)
    flying = [
        {
            "request_id": f"f-{i:05d}",
            "cluster": "default",
            "submission_id": f"driver-20261206000000-{i:05d}",
            "phase": Phase.POLLING.value,
            "state": DriverState.RUNNING.value,
            "labels": {},
            "polls": 1,
            "unknown_polls": 0,
            "submitted_at": datetime.now(UTC),
        }
        for i in range(IN_FLIGHT)
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(RequestRow), flying)


def timed(call: Callable[[], object], repeat: int = REPEAT) -> tuple[float, float]:
    """p50 and p99 (ms) of ``call``."""
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return statistics.median(took), took[min(len(took) - 1, int(0.99 * len(took)))]


def listing(
    store: RequestStore, listed: JobFilter, offset: int = 0, cursor: str | None = None
) -> list[JobRecord]:
    """What GET /jobs reads: the capped count, then one page."""
    after = None if cursor is None else paging.decode(cursor, listed)
    store.count(listed, up_to=MAX_COUNTED)
    return store.page(listed, PAGE + 1, offset if after is None else 0, after)


def pages(store: RequestStore, rows: int) -> list[tuple[str, float, float]]:
    everything = JobFilter()
    middle = rows // 2
    at = START + timedelta(seconds=middle - 1)
    cursor = paging.encode((at, f"h-{middle - 1:07d}"), everything)
    hour = JobFilter(
        since=START + timedelta(seconds=middle), until=START + timedelta(seconds=middle + 3600)
    )
    rare = JobFilter(state=DriverState.FAILED)
    deep_by_cursor = listing(store, everything, cursor=cursor)
    deep_by_offset = listing(store, everything, offset=middle)
    assert [r.request_id for r in deep_by_cursor] == [r.request_id for r in deep_by_offset]
    return [
        ("first page", *timed(lambda: listing(store, everything))),
        (
            f"page at {middle:,} by cursor",
            *timed(lambda: listing(store, everything, cursor=cursor)),
        ),
        (
            f"page at {middle:,} by offset (baseline)",
            *timed(lambda: listing(store, everything, offset=middle), 5),
        ),
        ("state=FAILED (0.1%), first page", *timed(lambda: listing(store, rare))),
        ("one hour's window", *timed(lambda: listing(store, hour))),
    ]


def writes(store: RequestStore, seconds: float) -> list[float]:
    """Latencies (ms) of the poll path's state-change writes for ``seconds``."""
    records = [store.get(f"f-{i:05d}") for i in range(IN_FLIGHT)]
    took: list[float] = []
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        i = n % IN_FLIGHT
        record = records[i]
        assert record is not None
        # Always a change of state: a write, never a poll only counted in memory.
        running = record.state == DriverState.RUNNING
        state = DriverState.SUBMITTED if running else DriverState.RUNNING
        status = DriverStatus(found=True, state=state, raw_state=state.value)
        started = time.perf_counter()
        records[i] = store.record_poll(record, status) or record
        took.append((time.perf_counter() - started) * 1000)
        n += 1
    return took


def purge(store: RequestStore, rows: int) -> tuple[int, float, list[float], list[float]]:
    baseline = writes(store, 5)
    retention = Retention(store, days=1)
    cutoff_now = START + timedelta(seconds=rows // 2) + timedelta(days=1, seconds=40)
    during: list[float] = []
    done = threading.Event()

    def write_meanwhile() -> None:
        while not done.is_set():
            during.extend(writes(store, 1))

    writer = threading.Thread(target=write_meanwhile)
    writer.start()
    started = time.monotonic()
    deleted = 0
    while True:
        went = retention.purge(cutoff_now)
        deleted += went
        if not went:
            break
    elapsed = time.monotonic() - started
    done.set()
    writer.join()
    return deleted, elapsed, baseline, during


def quantiles(values: list[float]) -> str:
    values = sorted(values)
    return f"{statistics.median(values):.2f} / {values[int(0.99 * (len(values) - 1))]:.2f} ms"


def run(name: str, url: str, rows: int) -> None:
    engine = create_db_engine(url)
    store = RequestStore(engine)
    store.create_schema()
    started = time.monotonic()
    fill(engine, rows)
    filled_s = time.monotonic() - started
    print(
        f"\n### {name}: {rows:,} finished + {IN_FLIGHT:,} in flight (filled in {filled_s:.0f} s)\n"
    )
    print("| listing (count capped at 10,000 + 100 records) | p50 | p99 |")
    print("|---|---|---|")
    for what, p50, p99 in pages(store, rows):
        print(f"| {what} | {p50:.1f} ms | {p99:.1f} ms |")
    deleted, elapsed, baseline, during = purge(store, rows)
    print()
    print(
        "| purge of the older half | deleted | rate "
        "| poll writes p50 / p99, no purge (baseline) | while purging |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| batches of 1,000 | {deleted:,} | {deleted / elapsed:,.0f} rows/s | "
        f"{quantiles(baseline)} | {quantiles(during)} |"
    )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--only", default="sqlite,postgresql")
    args = parser.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        if "sqlite" in only:
            run("SQLite", f"sqlite:///{tmp}/history.db", args.rows)
        if "postgresql" in only:
            server = Postgres(Path(tmp) / "pg").start()
            try:
                run("PostgreSQL", server.url, args.rows)
            finally:
                server.stop()


if __name__ == "__main__":
    main()
