"""How a replica decides which shards to take or hand over (the pure part of leadership.py)."""

from __future__ import annotations

import itertools
from typing import cast

import pytest
from sqlalchemy import Engine

from poller.errors import ConfigMismatch, ReplicaIdInUse
from poller.leadership import ORPHAN_BEATS, Leadership, Plan, balance
from poller.lease import LocalLease, Membership
from poller.service import session_name
from poller.shards import fair_share, jobs_table, shard_of


def test_a_lone_replica_takes_every_shard() -> None:
    assert balance(6, [], {}, {"a"}, "a") == Plan([0, 1, 2, 3, 4, 5], None)


def test_a_replica_that_joins_gets_its_share_handed_over_one_at_a_time() -> None:
    everything = dict.fromkeys(range(4), "a")
    # The holder of all four hands its highest over; the newcomer, holding none, waits for it.
    assert balance(4, [0, 1, 2, 3], everything, {"a", "b"}, "a") == Plan([], 3)
    assert balance(4, [], everything, {"a", "b"}, "b") == Plan([], None)
    # Next beat: shard 3 is free. The newcomer takes it; the one that gave it up neither takes
    # it back nor gives another before it is taken.
    three = {0: "a", 1: "a", 2: "a"}
    assert balance(4, [], three, {"a", "b"}, "b") == Plan([3], None)
    assert balance(4, [0, 1, 2], three, {"a", "b"}, "a") == Plan([], None)
    taken = {**three, 3: "b"}
    assert balance(4, [0, 1, 2], taken, {"a", "b"}, "a") == Plan([], 2)
    # Balanced: nobody moves.
    two_each = {0: "a", 1: "a", 2: "b", 3: "b"}
    assert balance(4, [0, 1], two_each, {"a", "b"}, "a") == Plan([], None)


def test_only_a_replica_with_the_fewest_takes_a_free_shard() -> None:
    holders = {0: "a", 1: "b", 2: "b"}  # shard 3 is free
    members = {"a", "b", "c"}
    assert balance(4, [], holders, members, "c") == Plan([3], None)
    assert balance(4, [0], holders, members, "a") == Plan([], None)
    # Two more than the newcomer, but a shard is free: it goes to the newcomer first, and
    # nothing is handed over meanwhile (the newcomer would end with two, b with one).
    assert balance(4, [1, 2], holders, members, "b") == Plan([], None)
    # Once no shard is free, one more than the fewest plus one is handed over.
    assert balance(5, [1, 2, 4], {**holders, 4: "b", 3: "a"}, members, "b") == Plan([], 4)


def test_replicas_starting_together_look_at_different_shards_first() -> None:
    assert balance(6, [], {}, {"a", "b"}, "a", offset=0) == Plan([0, 1, 2], None)
    assert balance(6, [], {}, {"a", "b"}, "b", offset=3) == Plan([3, 4, 5], None)


def test_shards_are_stable_and_spread() -> None:
    assert [shard_of(f"req-{i}", 1) for i in range(3)] == [0, 0, 0]
    # CRC-32: the same in every process and release (not Python's salted hash).
    assert shard_of("req-1", 6) == 1829706545 % 6  # zlib.crc32(b"req-1")
    spread = [shard_of(f"request-{i}", 6) for i in range(6000)]
    assert min(spread.count(s) for s in range(6)) > 900
    assert fair_share(6, 4) == 2
    assert jobs_table(0) == "apscheduler_jobs"
    assert jobs_table(2) == "apscheduler_jobs_2"


def test_replica_names_stay_apart_within_what_postgresql_keeps() -> None:
    assert session_name("poller-7d9f-abcde") == "spark-poller poller-7d9f-abcde"
    # PostgreSQL keeps 63 bytes of application_name: two long pod names that differ only at
    # the end must not read the same there.
    one = session_name("spark-poller-" + "x" * 60 + "-a")
    two = session_name("spark-poller-" + "x" * 60 + "-b")
    assert one != two
    assert max(len(one), len(two)) <= 63
    # Printable ASCII only (the server would turn the rest into question marks).
    named = session_name("réplica-1")
    assert named.isascii()
    assert named.isprintable()
    assert named != session_name("rxplica-1")


class _Member:
    """Membership, for the pure decisions of Leadership.plan (no database)."""

    pid = 100

    def keep(self) -> None:
        pass


def _leadership(shards: int, me: str, who: list[object]) -> Leadership:
    """A Leadership whose look at the lock table answers from ``who`` (one list, replaced by
    the test between beats: holders, members, shard count in force, twins)."""
    leadership = Leadership(
        [LocalLease() for _ in range(shards)],
        engine=cast(Engine, object()),
        membership=cast(Membership, _Member()),
        me=me,
    )
    leadership._who = lambda: tuple(who)  # type: ignore[method-assign,assignment,return-value]
    return leadership


def test_a_replica_that_never_takes_is_handed_shards_ever_more_rarely() -> None:
    leadership = _leadership(4, "a", [])
    for lead in leadership.leads:
        lead.leading.set()
    gives: list[int] = []
    for beat in range(1, 121):
        held = leadership.held()
        who = [dict.fromkeys(held, "a"), {"a", "b"}, 4, set()]  # b is up but never takes
        leadership._who = lambda who=who: tuple(who)  # type: ignore[method-assign,misc]
        plan = leadership.plan()
        if plan.give is not None:
            gives.append(beat)
            leadership.leads[plan.give].leading.clear()
        for shard in plan.take:
            leadership.leads[shard].leading.set()
        # A shard handed over is never left without a holder for more than the orphan beats.
        assert len(leadership.held()) >= 3
    gaps = [b - a for a, b in itertools.pairwise(gives)]
    print("gives at beats", gives)
    assert len(gives) <= 4, gives
    assert gaps == sorted(gaps), gives
    assert gaps[0] > ORPHAN_BEATS, gives


def test_a_replica_gives_nothing_under_another_shard_count_or_a_name_in_use() -> None:
    leadership = _leadership(4, "a", [{}, {"a"}, 2, set()])
    with pytest.raises(ConfigMismatch, match="POLLER_SHARDS is 4, but the store is sliced into 2"):
        leadership.plan()
    twin = _leadership(4, "a", [{}, {"a"}, 4, {200}])
    with pytest.raises(ReplicaIdInUse, match="pid"):
        twin.plan()
