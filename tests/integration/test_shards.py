"""Shards: several replicas poll one PostgreSQL store at once, each its fair share of the shards,
and the shards of a replica that stops or dies go to the others."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict

import requests
import sqlalchemy as sa

from poller.devstack import wait_for
from tests.conftest import JobBody
from tests.replicas import Replica, log_times, one_event_each, submit
from tests.support import EventReader, ServiceProcess

SHARDS = 4


def _holding(slots: list[Replica]) -> dict[str, list[int]]:
    return {slot.name: slot.shards() or [] for slot in slots}


def _shared(slots: list[Replica], per_slot: dict[str, int]) -> bool:
    """Each slot holds the given number of shards, and every shard has exactly one holder."""
    held = _holding(slots)
    every = sorted(shard for shards in held.values() for shard in shards)
    return every == list(range(SHARDS)) and all(
        len(held[name]) == count for name, count in per_slot.items()
    )


def test_replicas_share_the_shards_and_take_over_those_of_one_that_goes(
    replicas: list[Replica], job_body: JobBody, events: EventReader
) -> None:
    for slot in replicas:
        slot.env["POLLER_SHARDS"] = str(SHARDS)
    a, b, c = replicas
    a.start()
    wait_for(lambda: _shared([a], {"a": 4}), 30, "one replica to hold every shard")
    b.start()
    wait_for(lambda: _shared([a, b], {"a": 2, "b": 2}), 30, "two replicas to share the shards")

    # Each driver is polled by the replica holding its request's shard, whichever took it.
    drivers = {
        f"shared-{i}": submit((a if i % 2 else b).current, f"shared-{i}", job_body(seconds=3))
        for i in range(8)
    }
    by_key = one_event_each(events, set(drivers))
    for request_id, [event] in by_key.items():
        assert event.value["state"] == "FINISHED", event.value
        assert event.value["submission_id"] == drivers[request_id]
    asked_by: dict[str, set[str]] = defaultdict(set)
    for slot in (a, b):
        for call in slot.proxy.seen("status"):
            asked_by[call.driver].add(slot.name)
    assert all(len(asked_by[d]) == 1 for d in drivers.values()), dict(asked_by)
    assert {name for names in asked_by.values() for name in names} == {"a", "b"}
    publishers = {event.headers.get("poller-replica") for [event] in by_key.values()}
    assert publishers == {"a1", "b1"}, publishers

    # A replica that stops hands its shards over on the way out; one that joins gets its share.
    stopped_at = time.monotonic()
    assert b.current.terminate() == 0
    wait_for(lambda: _shared([a], {"a": 4}), 15, "the remaining replica to take every shard")
    print(f"shards: taken over {time.monotonic() - stopped_at:.1f}s after a clean stop began")
    c.start()
    wait_for(lambda: _shared([a, c], {"a": 2, "c": 2}), 30, "a joining replica to get its share")

    # One that dies: the survivor takes its shards, and nothing is lost.
    late = {f"late-{i}": submit(c.current, f"late-{i}", job_body(seconds=6)) for i in range(4)}
    c.current.kill9()
    wait_for(lambda: _shared([a], {"a": 4}), 30, "the survivor to take the dead one's shards")
    everything = one_event_each(events, set(drivers) | set(late))
    for request_id in late:
        [event] = everything[request_id]
        assert event.value["state"] == "FINISHED", event.value
        assert event.value["submission_id"] == late[request_id]


def test_a_changed_shard_count_waits_until_no_request_is_in_flight(
    replicas: list[Replica], job_body: JobBody
) -> None:
    """Requests in flight sit in the job tables of the shards they hash to, under the count in
    force: another count would look for them elsewhere. A start with another count is refused
    while any is in flight (a store from before shards counts as one shard) or another replica
    runs with the old count; once neither holds, the new count is settled, and a start with
    the old one is refused in turn."""
    a, b, _ = replicas
    a.env = {**a.env, "POLLER_SHARDS": "1"}
    b.env = {**b.env, "POLLER_SHARDS": str(SHARDS)}
    a.start()
    submit(a.current, "long", job_body(seconds=120))
    assert a.current.terminate() == 0
    # The release before shards wrote no layout: its requests sit in the one table there was.
    engine = sa.create_engine(a.env["POLLER_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM poller_layout"))
    engine.dispose()

    def refused(slot: Replica) -> str:
        started = subprocess.run(
            [sys.executable, "-m", "poller", "serve"],
            env={**slot.env, "POLLER_SPARK_REST_URL": slot.proxy.url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert started.returncode != 0
        return started.stdout + started.stderr

    said = refused(b)
    assert f"POLLER_SHARDS is {SHARDS}, but the store is sliced into 1 shard(s)" in said
    assert "1 request(s) are not done, 0 other replica(s) running" in said, said[-2000:]

    # The old count runs on; with the request done, a replica still running with it stands in
    # the way, and once it has stopped the new count is settled.
    a.start()
    assert a.current.delete("/jobs/long", params={"kill": "true"}).status_code in {200, 202}
    wait_for(lambda: a.current.job("long")["phase"] == "done", 90, "the cancel to end")
    said = refused(b)
    assert "0 request(s) are not done, 1 other replica(s) running" in said, said[-2000:]
    assert a.current.terminate() == 0
    b.start()
    wait_for(lambda: _shared([b], {"b": SHARDS}), 30, "the new count's shards to be held")
    assert f"POLLER_SHARDS is 1, but the store is sliced into {SHARDS} shard(s)" in refused(a)

    # A replica that meets another count while it runs (two starts racing, or a hand on the
    # table) stands every shard down, then stops.
    engine = sa.create_engine(a.env["POLLER_DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE poller_layout SET shards = 2"))
    engine.dispose()
    wait_for(lambda: not b.current.running(), 30, "the replica to stop")
    assert b.current.proc is not None
    assert b.current.proc.returncode != 0
    [fatal] = log_times(b.current, "the store is sliced into 2 shard(s) now")
    stood_down = log_times(b.current, "lost the scheduler lease of shard")
    assert len(stood_down) == SHARDS
    assert max(stood_down) <= fatal


def test_a_second_process_with_the_same_replica_id_takes_nothing_until_the_first_goes(
    replicas: list[Replica], job_body: JobBody, events: EventReader
) -> None:
    """Two processes going by one name would be counted as one replica when the shards are
    shared: the later one serves the API, says why it is not ready, and takes no shard while
    the first lives; then it takes them all."""
    a, b, _ = replicas
    for slot in (a, b):
        slot.env = {**slot.env, "POLLER_SHARDS": str(SHARDS)}
    a.start()
    wait_for(lambda: _shared([a], {"a": SHARDS}), 30, "the first to hold every shard")
    twin = ServiceProcess(
        {
            **b.env,
            "POLLER_SPARK_REST_URL": b.proxy.url,
            "POLLER_REPLICA_ID": "a1",
            "POLLER_LOG_FORMAT": "json",
        },
        b.workdir / "twin.log",
    ).start()
    try:

        def waiting() -> bool:
            ready = twin.http.get(f"{twin.url}/readyz", timeout=2)
            return ready.status_code == 503 and "replica" in ready.json()["checks"]["scheduler"]

        wait_for(waiting, 15, "the twin to say why it waits")
        ready = twin.http.get(f"{twin.url}/readyz", timeout=2).json()
        assert ready["shards"] == [], ready
        assert "POLLER_REPLICA_ID" in ready["checks"]["scheduler"]
        # The first goes on polling every shard, and requests through the twin are polled.
        submitted = submit(twin, "via-twin", job_body(seconds=2))
        [event] = one_event_each(events, {"via-twin"})["via-twin"]
        assert event.value["submission_id"] == submitted
        assert [call.driver for call in a.proxy.seen("status")].count(submitted) >= 1
        assert b.proxy.seen("status") == [], "the twin polled"
        assert _shared([a], {"a": SHARDS})

        a.current.kill9()
        wait_for(lambda: twin_holds(twin) == list(range(SHARDS)), 30, "the twin to take over")
    finally:
        twin.terminate()


def twin_holds(svc: ServiceProcess) -> list[int]:
    try:
        return sorted(svc.http.get(f"{svc.url}/readyz", timeout=2).json()["shards"])
    except (requests.RequestException, ValueError, KeyError):
        return []
