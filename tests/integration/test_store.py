"""The request store's contract, on SQLite and PostgreSQL alike (real databases, no mocks)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from poller.db import create_db_engine
from poller.devstack import Postgres
from poller.errors import ConfigMismatch, DriverTaken, RequestConflict, StoreUnavailable
from poller.outbox import completion_event
from poller.schemas import (
    DriverState,
    DriverStatus,
    EndDetails,
    Failure,
    JobFilter,
    JobRecord,
    Phase,
    Worker,
)
from poller.store import RequestStore
from tests.databases import new_pg_database
from tests.support import check_event

DRIVER = "driver-20261125101500-0003"


@pytest.fixture
def store(database_url: str) -> Iterator[RequestStore]:
    engine = create_db_engine(database_url)
    store = RequestStore(engine)
    store.create_schema()
    yield store
    engine.dispose()


def _tracked(store: RequestStore, request_id: str, driver: str, cluster: str = "default") -> None:
    """A request polling ``driver``, the way submit leaves it."""
    store.insert(request_id, cluster, {})
    assert store.mark_submitted(request_id, driver, DriverState.RUNNING) is not None


# -- item 3: one driver, one request -------------------------------------------------------------


def test_adopting_a_tracked_driver_names_the_request_tracking_it(store: RequestStore) -> None:
    _tracked(store, "ours", DRIVER)
    with pytest.raises(DriverTaken) as taken:
        store.insert("theirs", "default", {}, submission_id=DRIVER)
    assert taken.value.tracking_request_id == "ours"
    assert "'ours'" in taken.value.message
    assert DRIVER in taken.value.message
    assert store.get("theirs") is None

    # An adoption in flight (still SUBMITTING) holds its driver too.
    store.insert("adopter", "default", {}, submission_id="driver-20261125101500-0004")
    with pytest.raises(DriverTaken, match="'adopter'"):
        store.insert("second", "default", {}, submission_id="driver-20261125101500-0004")


def test_a_taken_request_id_is_told_apart_from_a_taken_driver(store: RequestStore) -> None:
    _tracked(store, "ours", DRIVER)
    # Both taken (a client retrying its own adoption): the request_id is what the caller reuses.
    with pytest.raises(RequestConflict) as conflict:
        store.insert("ours", "default", {}, submission_id=DRIVER)
    assert not isinstance(conflict.value, DriverTaken)
    assert "request_id 'ours' already exists" in conflict.value.message


def test_a_driver_is_free_on_another_cluster_and_once_its_request_is_done(
    store: RequestStore,
) -> None:
    _tracked(store, "ours", DRIVER)
    store.insert("lab", "lab", {}, submission_id=DRIVER)  # another cluster's driver of that name
    assert store.complete("ours", DriverState.FINISHED, None)
    with pytest.raises(DriverTaken):  # publishing: its event is not out yet
        store.insert("late", "default", {}, submission_id=DRIVER)
    store.mark_published(["ours"])
    assert store.insert("later", "default", {}, submission_id=DRIVER).submission_id == DRIVER


def test_an_ending_returns_the_record_exactly_as_stored(store: RequestStore) -> None:
    """The poll builds the event from what the ending's write returned: it must be what every
    later read (a re-publish) sees, to the microsecond and time zone."""
    _tracked(store, "ours", DRIVER)
    seen = DriverStatus(found=True, state=DriverState.RUNNING, raw_state="RUNNING")
    store.record_poll(store.get("ours"), seen)  # type: ignore[arg-type]
    store.record_poll(store.get("ours"), seen)  # type: ignore[arg-type]  # counted in memory
    ended = DriverStatus(found=True, state=DriverState.FAILED, raw_state="ERROR", message="boom")
    fixed = store.complete("ours", DriverState.FAILED, "boom", seen=ended)
    assert fixed is not None
    assert fixed == store.get("ours")
    assert (fixed.phase, fixed.state, fixed.spark_state, fixed.polls) == (
        Phase.PUBLISHING,
        DriverState.FAILED,
        "ERROR",
        3,
    )
    assert fixed.completed_at is not None
    assert fixed.completed_at.tzinfo is not None
    assert fixed.last_polled_at == fixed.completed_at
    # Fixed once: a second ending finds nothing to fix and changes nothing.
    assert store.complete("ours", DriverState.FINISHED, "late") is None
    assert store.get("ours") == fixed


def test_a_run_keeps_when_it_started_where_and_why_it_ended(store: RequestStore) -> None:
    """The first answer that shows the driver running on a worker says when it started; the
    ending brings its worker, reason and detection bound in the same write, and the event built
    from the record carries them, as the shipped schema describes."""
    _tracked(store, "ours", DRIVER)
    submitted = DriverStatus(found=True, state=DriverState.SUBMITTED, raw_state="SUBMITTED")
    assert store.record_poll(store.get("ours"), submitted).started_at is None  # type: ignore[arg-type,union-attr]
    worker = {"worker_id": "worker-20261206-10.0.0.7-7078", "worker_host": "10.0.0.7"}
    running = DriverStatus(found=True, state=DriverState.RUNNING, raw_state="RUNNING", **worker)
    first = store.record_poll(store.get("ours"), running)  # type: ignore[arg-type]
    assert first is not None
    assert first.started_at is not None
    store.record_poll(store.get("ours"), running)  # type: ignore[arg-type]  # not again
    started = store.get("ours")
    assert started is not None
    assert started.started_at == first.started_at
    assert started.worker == Worker(id=worker["worker_id"], host="10.0.0.7")

    failure = Failure(
        reason="ValueError: bad partition 7",
        exception_class="ValueError",
        frame='File "/jobs/bad.py", line 6, in process_partition',
        log_tail="Traceback (most recent call last):\n...\nValueError: bad partition 7\n",
        log_source="stdout",
    )
    ended = DriverStatus(found=True, state=DriverState.FAILED, raw_state="FAILED")  # no worker
    seen_at = datetime.now(UTC)
    fixed = store.complete(
        "ours",
        DriverState.FAILED,
        None,
        seen=ended,
        details=EndDetails(failure=failure, detection_bound_s=30.0),
        at=seen_at,
    )
    assert fixed is not None
    assert fixed == store.get("ours")
    assert fixed.completed_at == seen_at
    assert fixed.worker == started.worker  # kept: the ending's answer named none
    assert (fixed.failure, fixed.detection_delay_bound_s) == (failure, 30.0)
    event = check_event(json.loads(completion_event(fixed).model_dump_json()))
    assert event["failure"]["reason"] == "ValueError: bad partition 7"
    assert event["duration_s"] == round((seen_at - first.started_at).total_seconds(), 3)


def test_polls_counted_in_memory_are_written_for_every_request(store: RequestStore) -> None:
    """Polls that changed nothing are counted in memory and written together: for all of them,
    and never into a request whose ending (and event) is already fixed."""
    running = DriverStatus(found=True, state=DriverState.RUNNING, raw_state="RUNNING")
    for n in range(3):
        _tracked(store, f"r{n}", f"driver-20261125101500-{n:04d}")
        store.record_poll(store.get(f"r{n}"), running)  # type: ignore[arg-type]  # spark_state
    for _ in range(2):
        for n in range(3):
            store.record_poll(store.get(f"r{n}"), running)  # type: ignore[arg-type]
    fixed = store.complete("r2", DriverState.FINISHED, None)
    assert fixed is not None
    store.record_poll(store.get("r0"), running)  # type: ignore[arg-type]
    assert store.flush_poll_counts() == 2
    fresh = RequestStore(store.engine)  # what another process (or a restart) reads
    assert [fresh.get(f"r{n}").polls for n in range(3)] == [4, 3, 3]  # type: ignore[union-attr]
    assert fresh.get("r2") == fixed
    assert store.flush_poll_counts() == 0


def test_a_fixed_ending_reads_the_same_in_every_process(store: RequestStore) -> None:
    """Polls this process counted but has not written yet belong to a request still polled: once
    another process fixed the ending, every process reads the record (and so builds the event)
    exactly as stored."""
    running = DriverStatus(found=True, state=DriverState.RUNNING, raw_state="RUNNING")
    _tracked(store, "elsewhere", DRIVER)
    store.record_poll(store.get("elsewhere"), running)  # type: ignore[arg-type]  # spark_state
    store.record_poll(store.get("elsewhere"), running)  # type: ignore[arg-type]  # in memory
    leader = RequestStore(store.engine)  # another process, which sees the driver end
    fixed = leader.complete("elsewhere", DriverState.FINISHED, None)
    assert fixed is not None
    assert store.get("elsewhere") == fixed


def test_a_lease_is_counted_only_under_the_shard_count_in_force(store: RequestStore) -> None:
    """A replica started with another count than the store's never leads: its lease take is
    refused, and the epochs of the count in force go on from where they were."""
    assert store.settle_shards(1) == 1  # a store from before shards had one
    assert store.take_lease(0, "one", 1).epoch == 1
    with pytest.raises(ConfigMismatch, match="POLLER_SHARDS is 4, but the store is sliced into 1"):
        store.take_lease(0, "four", 4)
    assert store.take_lease(0, "one", 1).epoch == 2
    # Another count is settled only with no request unfinished.
    store.insert("unfinished", "default", {})
    with pytest.raises(ConfigMismatch, match="1 request"):
        store.settle_shards(4)
    assert store.shards_in_force() == 1
    store.delete_submitting("unfinished")  # its create never reached Spark
    assert store.settle_shards(4) == 1
    assert store.shards_in_force() == 4
    assert store.take_lease(1, "four", 4).epoch == 1
    with pytest.raises(ConfigMismatch, match="POLLER_SHARDS is 1, but the store is sliced into 4"):
        store.take_lease(0, "one", 1)


def test_concurrent_adoptions_of_one_driver_make_one_request(store: RequestStore) -> None:
    contenders = 8
    start = threading.Barrier(contenders)
    outcomes: dict[str, str] = {}

    def adopt(request_id: str) -> None:
        start.wait(timeout=30)
        try:
            store.insert(request_id, "default", {}, submission_id=DRIVER)
            outcomes[request_id] = "adopted"
        except DriverTaken as exc:
            outcomes[request_id] = f"taken by {exc.tracking_request_id}"

    threads = [threading.Thread(target=adopt, args=(f"adopt-{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    [winner] = [r for r, outcome in outcomes.items() if outcome == "adopted"]
    assert outcomes == {
        f"adopt-{i}": "adopted" if f"adopt-{i}" == winner else f"taken by {winner}"
        for i in range(contenders)
    }


def test_our_new_driver_adopted_by_someone_else_first(store: RequestStore) -> None:
    """Spark made DRIVER for 'ours'; before we recorded it, 'theirs' adopted it."""
    store.insert("ours", "default", {})
    store.insert("theirs", "default", {}, submission_id=DRIVER)
    with pytest.raises(DriverTaken) as taken:
        store.mark_submitted("ours", DRIVER, DriverState.SUBMITTED)
    assert taken.value.tracking_request_id == "theirs"
    assert store.get("ours") is None  # withdrawn: the driver keeps exactly one request
    theirs = store.get("theirs")
    assert theirs is not None
    assert theirs.phase == Phase.SUBMITTING
    assert store.mark_submitted("theirs", DRIVER, DriverState.RUNNING) is not None


def _index_names(engine: sa.Engine) -> set[str]:
    return {str(ix["name"]) for ix in sa.inspect(engine).get_indexes("poller_requests")}


def test_start_up_adds_the_driver_index_to_an_existing_database(
    store: RequestStore, caplog: pytest.LogCaptureFixture
) -> None:
    engine = store.engine
    (index,) = [ix for ix in sa.inspect(engine).get_indexes("poller_requests") if ix["unique"]]
    name = str(index["name"])
    # A database made before the index existed, already holding two requests for one driver.
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP INDEX {name}"))
    _tracked(store, "old-1", DRIVER)
    _tracked(store, "old-2", DRIVER)
    with caplog.at_level(logging.ERROR, logger="poller.store"):
        store.create_schema()  # the service still starts ...
    assert name not in _index_names(engine)
    assert "old-1" in caplog.text
    assert "old-2" in caplog.text  # ... and says which requests share a driver
    assert store.complete("old-2", DriverState.CANCELLED, "duplicate")
    store.mark_published(["old-2"])
    store.create_schema()
    assert name in _index_names(engine)
    with pytest.raises(DriverTaken, match="'old-1'"):
        store.insert("new", "default", {}, submission_id=DRIVER)


# -- item 5: every read-modify-write is atomic --------------------------------------------------


def _rival_store(database_url: str) -> RequestStore:
    """A second engine on the same database whose lock waits give up at once (0.2 s)."""
    if database_url.startswith("sqlite"):
        engine = sa.create_engine(database_url, connect_args={"timeout": 0.2})
    else:
        engine = sa.create_engine(database_url, connect_args={"options": "-c lock_timeout=200"})
    return RequestStore(engine)


class Interleave:
    """Runs ``action`` on another engine just before or after the n-th statement on our table.

    The store call in progress keeps whatever locks it holds until the hook returns, so the
    rival either goes through (nothing was locked yet) or gives up on its short lock timeout.
    """

    def __init__(self, engine: sa.Engine, when: str, nth: int, action: Callable[[], Any]) -> None:
        self.engine = engine
        self.event = f"{when}_cursor_execute"
        self.nth = nth
        self.action = action
        self.seen = 0
        self.fired = False
        self.result: Any = None

    def _hook(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.fired or "poller_requests" not in statement:
            return
        self.seen += 1
        if self.seen == self.nth:
            self.fired = True
            self.result = self.action()

    def __enter__(self) -> Interleave:
        sa.event.listen(self.engine, self.event, self._hook)
        return self

    def __exit__(self, *_exc: object) -> None:
        sa.event.remove(self.engine, self.event, self._hook)


def _resolve(rival: RequestStore, request_id: str) -> bool | None:
    """Recovery's step, from the rival engine: True/False as the store says, None if locked out."""
    try:
        return rival.resolve_submitting(request_id, DriverState.SUBMIT_UNKNOWN, "recovered")
    except StoreUnavailable:
        return None


POINTS = [("before", 1), ("after", 1), ("after", 2)]


@pytest.mark.parametrize(("when", "nth"), POINTS)
def test_mark_submitted_never_resurrects_a_resolved_request(
    store: RequestStore, database_url: str, when: str, nth: int
) -> None:
    rival = _rival_store(database_url)
    store.insert("race", "default", {})
    with Interleave(store.engine, when, nth, lambda: _resolve(rival, "race")) as interleave:
        record = store.mark_submitted("race", DRIVER, DriverState.SUBMITTED)
    resolved = interleave.result if interleave.fired else None
    final = store.get("race")
    assert final is not None
    if resolved:
        assert record is None, "mark_submitted overwrote a request recovery had resolved"
        assert (final.phase, final.state) == (Phase.PUBLISHING, DriverState.SUBMIT_UNKNOWN)
    else:
        assert record is not None
        assert _resolve(rival, "race") is False
        assert (final.phase, final.submission_id) == (Phase.POLLING, DRIVER)
    rival.engine.dispose()


@pytest.mark.parametrize(("when", "nth"), POINTS)
def test_delete_submitting_never_deletes_a_resolved_request(
    store: RequestStore, database_url: str, when: str, nth: int
) -> None:
    rival = _rival_store(database_url)
    store.insert("race", "default", {})
    with Interleave(store.engine, when, nth, lambda: _resolve(rival, "race")) as interleave:
        store.delete_submitting("race")
    resolved = interleave.result if interleave.fired else None
    final = store.get("race")
    if resolved:
        assert final is not None, "delete_submitting dropped a request recovery had resolved"
        assert final.phase == Phase.PUBLISHING
    else:
        assert final is None
        assert _resolve(rival, "race") is False
    rival.engine.dispose()


# -- item 6: times are UTC ----------------------------------------------------------------------


def _datetimes(record: JobRecord) -> dict[str, datetime]:
    values = record.model_dump()
    return {k: v for k, v in values.items() if isinstance(v, datetime)}


def test_times_read_back_in_utc_whatever_the_server_time_zone(postgres: Postgres) -> None:
    url = new_pg_database(postgres, "Europe/Paris")
    engine = create_db_engine(url)
    store = RequestStore(engine)
    store.create_schema()
    store.insert("paris", "default", {})
    running = store.mark_submitted("paris", DRIVER, DriverState.RUNNING)
    assert running is not None
    store.record_poll(running, DriverStatus(found=True, state=DriverState.RUNNING))
    store.complete("paris", DriverState.FINISHED, None)
    record = store.get("paris")
    assert record is not None
    stamps = _datetimes(record)
    assert set(stamps) >= {"submitted_at", "last_polled_at", "completed_at"}
    for field, value in stamps.items():
        assert value.tzinfo is UTC, f"{field}: {value.isoformat()}"
    as_json = record.model_dump(mode="json")  # the event's times serialise the same way
    assert as_json["submitted_at"].endswith("Z"), as_json["submitted_at"]
    assert as_json["completed_at"].endswith("Z"), as_json["completed_at"]
    (paged,) = store.page(JobFilter(), 10, 0)
    assert paged == record
    with engine.connect() as conn:  # the session itself is pinned, whatever the server says
        assert conn.scalar(sa.text("SHOW TIME ZONE")) == "UTC"
    engine.dispose()


def test_a_time_in_another_zone_is_the_same_instant(store: RequestStore) -> None:
    store.insert("old", "default", {})
    cutoff = datetime.now(UTC).astimezone(timezone(timedelta(hours=-5)))
    assert [r.request_id for r in store.submitting_since(cutoff)] == ["old"]


# -- item 18: SQLite commits are durable ----------------------------------------------------------


def test_sqlite_commits_survive_an_os_crash(tmp_path: Any) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'durable.db'}")
    with engine.connect() as conn:
        assert conn.scalar(sa.text("PRAGMA journal_mode")) == "wal"
        assert conn.scalar(sa.text("PRAGMA synchronous")) == 2  # FULL: fsync at every commit
    engine.dispose()
