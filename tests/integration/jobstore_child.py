"""A process that leads a job store and adds and removes poll jobs as fast as it can, saying which
calls returned (``acks``) and which jobs ran (``runs``): the durability test kills it with -9.

    python -m tests.integration.jobstore_child DATABASE_URL WORKDIR [--only-run]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from poller.db import create_db_engine
from poller.scheduler import PollScheduler

RUNS: Path | None = None


def ran(job_id: str) -> None:
    """The jobs' function: note the run (one short line, appended atomically)."""
    assert RUNS is not None
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{job_id}\n".encode())
    finally:
        os.close(fd)


def main() -> None:
    global RUNS
    database_url, workdir = sys.argv[1], Path(sys.argv[2])
    RUNS = workdir / "runs"
    engine = create_db_engine(database_url, pool_size=8)
    scheduler = PollScheduler(engine, f"{__name__}:ran", interval_s=1.0, threads=4)
    scheduler.jobstore.jobs_t.create(engine, checkfirst=True)
    scheduler.start()
    scheduler.lead()
    scheduler.spread_overdue(1.0)
    scheduler.resume()
    if "--only-run" in sys.argv:
        time.sleep(3600)
    acks = open(workdir / "acks", "a", buffering=1)  # noqa: SIM115 (open for the process's life)
    start = len((workdir / "acks").read_text().splitlines())
    n = start
    while True:
        job_id = f"job-{os.getpid()}-{n}"
        scheduler.add(job_id)
        acks.write(f"added {job_id}\n")
        if n % 3 == 0:
            scheduler.remove(job_id)
            acks.write(f"removed {job_id}\n")
        n += 1


if __name__ == "__main__":
    main()
