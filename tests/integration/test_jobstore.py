"""The job store one leader owns: jobs in memory, every add and remove durable when it returns."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from poller.db import create_db_engine
from poller.devstack import wait_for
from poller.scheduler import PollScheduler
from poller.shards import JOBS_TABLE
from tests.conftest import JobBody, ServiceFactory
from tests.integration import jobstore_child
from tests.support import EventReader, ServiceProcess, poll_job_ids

ROOT = Path(__file__).resolve().parents[2]
CHILD = "tests.integration.jobstore_child"
KILLS = 6


def start_child(database_url: str, workdir: Path, *flags: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", CHILD, database_url, str(workdir), *flags], cwd=ROOT
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_kill_9_at_any_moment_loses_no_job(database_url: str, tmp_path: Path) -> None:
    """A process adds and removes jobs as fast as it can and is killed with -9 at random moments,
    six times: every add it was told had succeeded is in the store, every remove too, nothing
    else is; and a new leader runs every job."""
    seed = random.randrange(1_000_000)
    print(f"random seed {seed}")
    chance = random.Random(seed)
    acks = tmp_path / "acks"
    for _ in range(KILLS):
        before = len(lines(acks))
        child = start_child(database_url, tmp_path)
        wait_for(lambda: len(lines(acks)) >= before + 50, 60, "jobs to be added")  # noqa: B023
        time.sleep(chance.uniform(0, 0.5))
        child.kill()
        child.wait(30)
    added: set[str] = set()
    removed: set[str] = set()
    last: dict[str, int] = {}
    for line in lines(acks):
        verb, job_id = line.split(" ", 1)
        (added if verb == "added" else removed).add(job_id)
        pid, n = re.fullmatch(r"job-(\d+)-(\d+)", job_id).groups()  # type: ignore[union-attr]
        last[pid] = max(last.get(pid, 0), int(n))
    # The kill may have come between a call and its acknowledgement: the last job of each
    # process, and the one after it, may be either way.
    either = {f"job-{pid}-{n + k}" for pid, n in last.items() for k in (0, 1)}
    stored = poll_job_ids(database_url)
    assert len(added) >= KILLS * 50
    assert (added - removed - either) <= stored, sorted((added - removed - either) - stored)[:5]
    assert not (removed - either) & stored
    assert stored <= added | either, sorted(stored - added - either)[:5]

    (tmp_path / "runs").unlink(missing_ok=True)
    child = start_child(database_url, tmp_path, "--only-run")
    try:
        wait_for(
            lambda: set(lines(tmp_path / "runs")) >= stored,
            60,
            "every stored job to run",
            describe=lambda: f"{len(stored - set(lines(tmp_path / 'runs')))} not run yet",
        )
    finally:
        child.kill()
        child.wait(30)


def test_next_run_times_reach_the_table_in_batches_and_serve_the_next_leader(
    database_url: str, tmp_path: Path
) -> None:
    engine = create_db_engine(database_url)
    (tmp_path / "runs").touch()
    func = f"{CHILD}:ran"
    jobstore_child.RUNS = tmp_path / "runs"
    first = PollScheduler(engine, func, interval_s=1.0, threads=2)
    first.jobstore.jobs_t.create(engine, checkfirst=True)
    first.start()
    first.lead()
    first.resume()
    now = datetime.now(UTC)
    for n in range(20):
        first.add(f"t-{n}", first_run_at=now + timedelta(milliseconds=50 * n))
    table = sa.table(JOBS_TABLE, sa.column("id"), sa.column("next_run_time"))

    def stored_times() -> dict[str, float]:
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(table.c.id, table.c.next_run_time)).all())

    added = stored_times()
    # Each job runs every second; its row follows within about a second, in batches.
    wait_for(
        lambda: all(t >= added[k] + 2 for k, t in stored_times().items()),
        15,
        "the table's next run times to follow the runs",
    )
    first.shutdown()  # a clean stop saves the latest times
    saved = stored_times()
    second = PollScheduler(engine, func, interval_s=1.0, threads=2)
    second.start()
    assert second.lead() == 20
    loaded = {k: v.timestamp() for k, v in second.next_run_times(list(saved)).items()}
    assert loaded == pytest.approx(saved, abs=1e-3)
    second.shutdown()
    engine.dispose()


def test_a_request_recorded_through_a_standby_is_polled_by_the_leader(
    start_service: ServiceFactory,
    service_env: dict[str, str],
    job_body: JobBody,
    events: EventReader,
    tmp_path: Path,
) -> None:
    leader = start_service()
    wait_for(lambda: leader.get("/readyz").json()["role"] == "leader", 30, "the leader")
    standby = ServiceProcess(service_env, tmp_path / "standby.log").start()
    try:
        assert standby.get("/readyz").json()["role"] == "standby"
        answer = standby.post("/submit", json={"request_id": "via-b", "job": job_body(seconds=2)})
        assert answer.status_code == 202, answer.text
        cancel = standby.post("/submit", json={"request_id": "cancel-b", "job": job_body(30)})
        assert cancel.status_code == 202, cancel.text
        wait_for(lambda: leader.job("cancel-b")["polls"] >= 1, 30, "the leader to poll it")
        assert standby.delete("/jobs/cancel-b").status_code == 200
        [event] = events.wait_for_keys({"via-b"})["via-b"]
        assert event.value["state"] == "FINISHED"
        assert standby.get("/readyz").json()["role"] == "standby"  # the leader did it
        wait_for(
            lambda: "cancel-b" not in poll_job_ids(service_env["POLLER_DATABASE_URL"]),
            30,
            "the cancelled request's job to go",
        )
        polls = leader.job("cancel-b")["polls"]
        time.sleep(3)  # three intervals: a job the leader still held would poll again
        assert leader.job("cancel-b")["polls"] == polls
    finally:
        standby.terminate()
