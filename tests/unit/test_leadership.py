"""How a replica decides which shards to take or hand over (the pure part of leadership.py)."""

from __future__ import annotations

from poller.leadership import Plan, balance
from poller.shards import fair_share, jobs_table, shard_of


def test_a_lone_replica_takes_every_shard() -> None:
    assert balance(6, [], {}, {"a"}, "a") == Plan([0, 1, 2, 3, 4, 5], None)


def test_a_replica_that_joins_gets_its_share_handed_over_one_at_a_time() -> None:
    everything = dict.fromkeys(range(4), "a")
    # The holder of all four hands its highest over; the newcomer, holding none, waits for it.
    assert balance(4, [0, 1, 2, 3], everything, {"a", "b"}, "a") == Plan([], 3)
    assert balance(4, [], everything, {"a", "b"}, "b") == Plan([], None)
    # Next beat: shard 3 is free. The newcomer takes it; the one that gave it up does not.
    three = {0: "a", 1: "a", 2: "a"}
    assert balance(4, [], three, {"a", "b"}, "b") == Plan([3], None)
    assert balance(4, [0, 1, 2], three, {"a", "b"}, "a") == Plan([], 2)
    # Balanced: nobody moves.
    two_each = {0: "a", 1: "a", 2: "b", 3: "b"}
    assert balance(4, [0, 1], two_each, {"a", "b"}, "a") == Plan([], None)


def test_only_a_replica_with_the_fewest_takes_a_free_shard() -> None:
    holders = {0: "a", 1: "b", 2: "b"}  # shard 3 is free
    members = {"a", "b", "c"}
    assert balance(4, [], holders, members, "c") == Plan([3], None)
    assert balance(4, [0], holders, members, "a") == Plan([], None)
    # Two more than the newcomer: one goes to it too.
    assert balance(4, [1, 2], holders, members, "b") == Plan([], 2)


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
