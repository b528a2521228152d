"""Several replicas on one PostgreSQL store: one leads and polls, the others serve the API.

Each replica reaches Spark through a loopback proxy of its own that remembers every call, so who
asked Spark what, and when, is read there rather than from the replicas' own account; who
published an event is read from its ``poller-replica`` header.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from poller.devstack import Postgres, SparkStandalone, wait_for
from poller.shards import shard_of
from tests.conftest import JobBody
from tests.replicas import (
    Replica,
    log_times,
    one_event_each,
    published_by,
    submit,
    terminate_sessions,
    wait_leader,
)
from tests.support import (
    EventReader,
    ProxiedCall,
    check_drivers_request,
    driver_state,
    poll_job_ids,
    spark_tags,
)

SPARK_ENDED = {"FINISHED", "FAILED", "KILLED", "ERROR"}
# A call already on its way when its process learnt it no longer leads.
IN_TRANSIT_S = 0.2
# How soon a leader cut off from the database must stop (its next lease check is 2 s away).
STOPS_WITHIN_S = 1.0


def test_a_leader_cut_off_from_the_database_stops_at_once(
    replicas: list[Replica],
    postgres: Postgres,
    job_body: JobBody,
    events: EventReader,
) -> None:
    """``pg_terminate_backend`` on every session of the leader: it stops asking Spark and
    publishing within a second (not at its next lease check), and whatever it did in that time
    matches what the next leader does: one event id per request, each as Spark ended it."""
    a, b, _ = replicas
    a.start()
    wait_leader([a])
    b.start()
    assert b.role() == "standby"
    drivers = {f"cut-{i}": submit(a.current, f"cut-{i}", job_body(seconds=6)) for i in range(3)}
    drivers["cut-via-b"] = submit(b.current, "cut-via-b", job_body(seconds=6))
    wait_for(
        lambda: all(a.current.job(rid)["state"] == "RUNNING" for rid in drivers),
        90,
        "the drivers to run",
    )

    cut_at = time.time()
    assert terminate_sessions(postgres, "spark-poller a1") >= 1
    # The leader that comes after the cut (a may still say "leader" for a few ms before it sees).
    wait_for(lambda: "lost the scheduler lease" in a.current.logs(), 30, "a to stand down")
    leader = wait_leader([a, b])
    by_key = one_event_each(events, set(drivers))

    [stopped_at] = log_times(a.current, "lost the scheduler lease")
    print(f"failover: a stopped {stopped_at - cut_at:.3f}s after its sessions were cut")
    assert stopped_at - cut_at < STOPS_WITHIN_S
    took_at = min(t for t in log_times(leader.current, "holding the scheduler lease") if t > cut_at)
    late = [
        call
        for call in a.proxy.calls
        if stopped_at + IN_TRANSIT_S < call.at and (leader is not a or call.at < took_at)
    ]
    assert late == [], f"a asked Spark after it stopped leading: {late}"
    for request_id, found in by_key.items():
        for event in found:
            assert event.value["state"] == "FINISHED", event.value
            assert event.value["submission_id"] == drivers[request_id]
            if published_by(event) == "a1" and leader is not a:
                assert event.timestamp_ms / 1000 <= stopped_at + IN_TRANSIT_S, event


def test_a_leader_frozen_past_its_lease_neither_asks_publishes_nor_kills_when_it_wakes(
    replicas: list[Replica],
    spark: SparkStandalone,
    job_body: JobBody,
    events: EventReader,
) -> None:
    """SIGSTOP longer than the lease: a standby takes over and publishes the driver that ended;
    the old leader, woken while the other driver still runs (its poll due at once), finds its
    lease gone before it acts: no call to Spark, no event; only the new leader kills the driver
    that overran."""
    for slot in replicas:
        slot.env |= {
            "POLLER_LEASE_TTL_S": "6",
            "POLLER_MAX_TRACKING_S": "30",
            "POLLER_KILL_ON_TIMEOUT": "true",
        }
    a, b, _ = replicas
    a.start()
    wait_leader([a])
    b.start()
    ends = submit(a.current, "frozen-ends", job_body(seconds=8))
    overruns = submit(a.current, "frozen-overruns", job_body(seconds=120))
    wait_for(
        lambda: all(
            a.current.job(rid)["state"] == "RUNNING" for rid in ("frozen-ends", "frozen-overruns")
        ),
        90,
        "the drivers to run",
    )
    pid = a.current.proc.pid if a.current.proc is not None else 0
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: b.role() == "leader", 30, "the standby to lead")
        [ended] = events.wait_for_keys({"frozen-ends"}, timeout_s=60)["frozen-ends"]
    finally:
        # Woken while the other driver still runs: its poll is due at once.
        woke_at = time.time()
        os.kill(pid, signal.SIGCONT)
    # Anything it did on waking, it did before it stood down (its scheduler pauses then).
    wait_for(lambda: "lost the scheduler lease" in a.current.logs(), 30, "the woken to yield")
    wait_for(lambda: a.role() == "standby", 30, "the woken leader to stand by")
    by_key = one_event_each(events, {"frozen-ends", "frozen-overruns"})

    after_waking = [call for call in a.proxy.calls if call.at >= woke_at]
    assert after_waking == [], f"the woken leader asked Spark: {after_waking}"
    kills = [call.driver for call in a.proxy.seen("kill") + b.proxy.seen("kill")]
    assert kills == [overruns], kills
    assert [call.driver for call in b.proxy.seen("kill")] == [overruns]
    assert by_key["frozen-ends"] == [ended]
    [overran] = by_key["frozen-overruns"]
    assert ended.value["state"] == "FINISHED"
    assert ended.value["submission_id"] == ends
    assert overran.value["state"] == "TIMED_OUT", overran.value
    assert "driver killed" in overran.value["message"], overran.value
    assert {published_by(ended), published_by(overran)} == {"b1"}
    events.drain(1)
    assert len(events.events) == 2, [e.value for e in events.events]
    assert driver_state(spark, overruns) == "KILLED"
    assert "scheduler lease lost" in a.current.logs()


def test_a_standby_hands_its_submits_and_cancels_to_the_leader_at_once(
    replicas: list[Replica],
    spark: SparkStandalone,
    job_body: JobBody,
    events: EventReader,
) -> None:
    """Submits through a standby are in the leader's schedule within a second or so (NOTIFY),
    each of them, not at its next look at the table (every 15 s); a cancel through it ends the
    driver as on the leader."""
    for slot in replicas:
        slot.env["POLLER_POLL_INTERVAL_SECONDS"] = "30"
    a, b, _ = replicas
    a.start()
    wait_leader([a])
    b.start()
    assert b.role() == "standby"
    quick = [f"quick-{n}" for n in range(3)]
    for request_id in quick:  # one might meet the leader's look at the table; three do not
        submit(b.current, request_id, job_body(seconds=1))
        wait_for(
            functools.partial(_scheduled, a, request_id),
            1.5,
            "the leader to schedule a submit made through the standby",
        )
        time.sleep(1)  # apart, so that no single look at the table could find them all
    submission_id = submit(b.current, "via-standby", job_body(seconds=60))
    wait_for(lambda: driver_state(spark, submission_id) == "RUNNING", 90, "the driver to run")
    answer = b.current.delete("/jobs/via-standby", params={"kill": "true"})
    assert answer.status_code in {200, 202}, answer.text
    event = one_event_each(events, {"via-standby", *quick})["via-standby"][0]
    assert event.value["state"] == "CANCELLED", event.value
    assert driver_state(spark, submission_id) == "KILLED"
    wait_for(
        lambda: "via-standby" not in poll_job_ids(a.env["POLLER_DATABASE_URL"]),
        30,
        "the poll job to go",
    )


def _scheduled(leader: Replica, request_id: str) -> bool:
    return leader.current.job(request_id).get("next_poll_at") is not None


# -- three replicas, the leader killed again and again ------------------------------------------

HA_KILLS = 10
HA_INTERVAL_S = 3.0
HA_REQUESTS = 30  # at least; more while the kills go on


@dataclass
class Spread:
    """Requests sent to whichever replica is up, round the slots, riding out deaths."""

    slots: list[Replica]
    rng: random.Random

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        deadline = time.monotonic() + 120
        while True:
            slot = self.rng.choice(self.slots)
            svc = slot.svc
            try:
                if svc is None or not svc.running():
                    raise requests.ConnectionError("not running")
                answer: requests.Response = getattr(svc, method)(path, **kwargs)
                return answer
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.mark.parametrize("shards", [1, 4], ids=["one-lease", "four-shards"])
def test_three_replicas_lose_nothing_when_the_leader_is_killed_again_and_again(
    replicas: list[Replica],
    spark: SparkStandalone,
    job_body: JobBody,
    events: EventReader,
    shards: int,
) -> None:
    """One lease: the leader is killed. Four shards: a replica holding shards is killed (and
    each restart takes its share back, so hand-overs happen as well as takeovers)."""
    rng = random.Random(20261206 + shards)
    for slot in replicas:
        slot.env["POLLER_POLL_INTERVAL_SECONDS"] = str(HA_INTERVAL_S)
        slot.env["POLLER_SHARDS"] = str(shards)
    replicas[0].start()
    wait_leader(replicas[:1])
    for slot in replicas[1:]:
        slot.start()
    client = Spread(replicas, rng)
    submitted: dict[str, str | None] = {}
    cancelled: set[str] = set()
    kills: list[tuple[float, str, list[int]]] = []  # (when, slot, shards it held)
    done = threading.Event()

    def victim() -> tuple[Replica, list[int]]:
        if shards == 1:
            return wait_leader(replicas), [0]
        holding: list[tuple[Replica, list[int]]] = []

        def some() -> bool:
            holding[:] = [(slot, held) for slot in replicas if (held := slot.shards())]
            return bool(holding)

        wait_for(some, 30, "a replica holding shards")
        return rng.choice(holding)

    def killer() -> None:
        while len(kills) < HA_KILLS and not done.is_set():
            time.sleep(rng.uniform(4, 7))
            leader, held = victim()
            leader.current.kill9()
            kills.append((time.time(), leader.name, held))  # dead now: later calls are others'
            time.sleep(rng.uniform(0.5, 2))
            leader.start()

    chaos = threading.Thread(target=killer, name="killer")
    chaos.start()
    try:
        i = 0
        while i < HA_REQUESTS or chaos.is_alive():  # requests in flight at every kill
            i += 1
            kind = rng.choice(["finish"] * 6 + ["fail"] * 2 + ["cancel"] * 2)
            request_id = f"ha-{i:02d}-{kind}"
            job = job_body(seconds=rng.uniform(2, 10), exit_code=int(kind == "fail"))
            answer = client.call("post", "/submit", json={"request_id": request_id, "job": job})
            if answer.status_code == 409:  # our first try landed before a crash
                answer = client.call("get", f"/jobs/{request_id}")
            assert answer.status_code in {200, 202, 504}, answer.text
            submitted[request_id] = answer.json().get("submission_id")
            if kind == "cancel":
                time.sleep(rng.uniform(0, 1))
                gone = client.call("delete", f"/jobs/{request_id}")
                assert gone.status_code in {200, 202, 409}, gone.text
                if gone.status_code != 409:
                    cancelled.add(request_id)
            time.sleep(rng.uniform(0.5, 2.5))
        chaos.join()
    finally:
        done.set()
        chaos.join()
    assert len(kills) == HA_KILLS

    by_key = one_event_each(events, set(submitted))
    counts: Counter[str] = Counter()
    tags = spark_tags(replicas[0].env["POLLER_DATABASE_URL"])
    for request_id, found in by_key.items():
        counts["duplicates"] += len(found) - 1
        event = found[0].value
        counts[event["state"]] += 1
        if event["state"] == "SUBMIT_UNKNOWN":
            assert event["submission_id"] is None
            continue
        if check_drivers_request(spark, request_id, event, submitted[request_id], tags):
            counts["found"] += 1
        if request_id in cancelled:
            assert event["state"] == "CANCELLED", event
            continue
        real = driver_state(spark, event["submission_id"])
        assert real in SPARK_ENDED, f"{request_id}: driver still {real}"
        assert event["state"] == real, f"{request_id}: event {event['state']}, cluster {real}"
    wait_for(
        lambda: poll_job_ids(replicas[0].env["POLLER_DATABASE_URL"]) == set(),
        60,
        "poll jobs to be gone",
    )

    # Failover: from each kill to the next status call of a driver in a shard the killed one
    # held, by another replica (only a shard's holder asks for one here).
    status = sorted(
        ((call, slot.name) for slot in replicas for call in slot.proxy.seen("status")),
        key=lambda pair: pair[0].at,
    )
    shard_of_driver = {
        sid: shard_of(rid, shards) for rid, sid in submitted.items() if sid is not None
    }
    failovers = []
    for killed_at, killed, held in kills:
        # Drivers of its shards that were being polled when it died, then polled by another.
        polled = {
            call.driver
            for call, _ in status
            if call.at < killed_at and shard_of_driver.get(call.driver) in held
        }
        # Whoever asks next: another replica, or the killed one's slot restarted (not the dead
        # process: its calls on the way at the kill are ignored).
        after = [
            call.at
            for call, slot_name in status
            if call.at > killed_at + (IN_TRANSIT_S if slot_name == killed else 0)
            and call.driver in polled
        ]
        if after:  # none: no driver of those shards was left in flight
            failovers.append(after[0] - killed_at)
    assert len(failovers) >= HA_KILLS // 2, failovers
    # Two leaders never ask about one driver within half an interval of each other.
    last: dict[str, tuple[ProxiedCall, str]] = {}
    double: list[str] = []
    for call, slot_name in status:
        earlier = last.get(call.driver)
        if earlier is not None and earlier[1] != slot_name:
            gap = call.at - earlier[0].at
            if gap < HA_INTERVAL_S / 2:
                double.append(f"{call.driver}: {earlier[1]} then {slot_name} {gap:.2f}s apart")
        last[call.driver] = (call, slot_name)
    print(
        f"ha: shards={shards} requests={len(submitted)} kills={len(kills)} failover "
        f"min={min(failovers):.2f}s median={statistics.median(failovers):.2f}s "
        f"max={max(failovers):.2f}s duplicates={counts.pop('duplicates', 0)} lost=0 wrong=0 "
        f"double_polls={len(double)} status_calls={len(status)} states={dict(counts)}"
    )
    assert double == []
    assert max(failovers) <= min(2 * HA_INTERVAL_S, 10), failovers
