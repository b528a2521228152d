"""How requests are partitioned into shards, and how many shards one replica should hold.

A shard is a slice of the requests with a job-store table and a scheduler lease of its own, so
that several replicas poll at once, each the shards it holds. The slice of a request never
changes: a stable hash of its id, taken over a shard count fixed when the store is first used.
"""

from __future__ import annotations

import math
import zlib

JOBS_TABLE = "apscheduler_jobs"  # shard 0's, the table of a store without shards
# PostgreSQL advisory lock keys (namespace, n): each shard's lease is (LEASES_NAMESPACE, shard),
# and every live replica holds (MEMBERS_NAMESPACE, 0) shared, so who runs shows in pg_locks.
LEASES_NAMESPACE = zlib.crc32(b"spark-poller scheduler lease") - 2**31
MEMBERS_NAMESPACE = zlib.crc32(b"spark-poller replicas") - 2**31
# Our granted advisory locks in this database, with the session holding each (``l``, ``a``):
# the FROM and WHERE of every look at who runs, bound with OUR_LOCKS_PARAMS.
OUR_LOCKS = (
    " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2"
    " AND l.classid::bigint IN (:leases, :members) AND l.database ="
    " (SELECT oid FROM pg_database WHERE datname = current_database())"
)
OUR_LOCKS_PARAMS = {  # pg_locks shows a key's halves as unsigned oids
    "leases": LEASES_NAMESPACE & 0xFFFFFFFF,
    "members": MEMBERS_NAMESPACE & 0xFFFFFFFF,
}


def shard_of(request_id: str, shards: int) -> int:
    """The shard of ``request_id``: the same in every process and release (CRC-32, not
    Python's salted ``hash``)."""
    if shards == 1:
        return 0
    return zlib.crc32(request_id.encode()) % shards


def jobs_table(shard: int) -> str:
    """The job-store table of ``shard``."""
    return JOBS_TABLE if shard == 0 else f"{JOBS_TABLE}_{shard}"


def fair_share(shards: int, replicas: int) -> int:
    """How many shards one of ``replicas`` live replicas holds at most while all are up."""
    return math.ceil(shards / max(1, replicas))
