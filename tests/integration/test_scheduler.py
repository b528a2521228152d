"""APScheduler 3 behaviour we rely on, on a real SQLAlchemy job store."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler

from poller import scheduler as scheduler_module
from poller.db import create_db_engine
from poller.devstack import Postgres, wait_for
from poller.scheduler import PollScheduler

JOBS = 100
runs: Counter[str] = Counter()
runs_lock = threading.Lock()
current: PollScheduler | None = None


def remove_self(job_id: str) -> None:
    """A job that does what a finished poll does: remove itself from inside its own run."""
    with runs_lock:
        runs[job_id] += 1
    assert current is not None
    current.remove(job_id)


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[PollScheduler]:
    global current
    engine = create_db_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    current = PollScheduler(engine, f"{__name__}:remove_self", interval_s=0.05, threads=8)
    current.start()
    current.resume()
    runs.clear()
    yield current
    current.shutdown()
    engine.dispose()
    current = None


def test_a_job_removing_itself_mid_run_is_neither_recreated_nor_rerun(
    scheduler: PollScheduler,
) -> None:
    # A 50 ms interval makes the scheduler's own update of the job race the removal as hard as
    # it can: the scheduler writes next_run_time right after handing the run to a worker thread.
    now = datetime.now(UTC)
    for i in range(JOBS):
        assert scheduler.add(f"job-{i}", first_run_at=now)
    wait_for(lambda: scheduler.stored_ids() == set(), 60, "every job to remove itself")
    assert sum(runs.values()) == JOBS
    assert set(runs.values()) == {1}
    assert scheduler.alive()


def test_duplicate_job_id_is_refused(scheduler: PollScheduler) -> None:
    scheduler.scheduler.pause()
    assert scheduler.add("same")
    assert not scheduler.add("same")
    assert scheduler.stored_ids() == {"same"}


@pytest.fixture
def restricted_db(postgres: Postgres) -> Iterator[tuple[str, Callable[[str], None]]]:
    """A database whose app role can lose UPDATE on the job table: a real fault outside
    ``get_due_jobs``. Yields the app's URL and a function running SQL as the superuser."""
    name = f"r_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE ROLE {name} LOGIN"))
        conn.execute(sa.text(f"CREATE DATABASE {name} OWNER {name}"))
    base = postgres.url.rsplit("/", 1)[0]
    owner_db = sa.create_engine(f"{base}/{name}", isolation_level="AUTOCOMMIT")

    def as_superuser(sql: str) -> None:
        with owner_db.connect() as conn:
            conn.execute(sa.text(sql.format(role=name)))

    yield base.replace("postgres@", f"{name}@") + f"/{name}", as_superuser
    owner_db.dispose()
    admin.dispose()


@pytest.mark.parametrize(
    "resilient",
    [
        True,
        # The stock scheduler's thread dies with an unhandled exception: that is the point.
        pytest.param(
            False,
            marks=pytest.mark.filterwarnings(
                "ignore::pytest.PytestUnhandledThreadExceptionWarning"
            ),
        ),
    ],
)
def test_job_store_error_outside_get_due_jobs(
    restricted_db: tuple[str, Callable[[str], None]],
    resilient: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """APScheduler's own BackgroundScheduler thread dies when ``update_job`` raises; ours lives."""
    url, as_superuser = restricted_db
    global current
    engine = create_db_engine(url)
    if not resilient:
        monkeypatch.setattr(scheduler_module, "ResilientScheduler", BackgroundScheduler)
    current = sched = PollScheduler(engine, f"{__name__}:count_run", interval_s=0.2, threads=2)
    runs.clear()
    current.start()
    current.resume()
    try:
        current.add("steady", first_run_at=datetime.now(UTC))
        wait_for(lambda: runs["steady"] >= 2, 30, "runs before the fault")
        as_superuser("REVOKE UPDATE ON apscheduler_jobs FROM {role}")
        if not resilient:
            wait_for(lambda: not sched.alive(), 30, "the stock scheduler thread to die")
            return
        seen = runs["steady"]
        wait_for(lambda: runs["steady"] >= seen + 2, 30, "runs during the fault")
        assert current.alive()
        as_superuser("GRANT UPDATE ON apscheduler_jobs TO {role}")
        seen = runs["steady"]
        wait_for(lambda: runs["steady"] >= seen + 3, 30, "runs after the fault")
        assert current.alive()
    finally:
        as_superuser("GRANT UPDATE ON apscheduler_jobs TO {role}")
        current.shutdown(wait=False)
        engine.dispose()
        current = None


def count_run(job_id: str) -> None:
    with runs_lock:
        runs[job_id] += 1
