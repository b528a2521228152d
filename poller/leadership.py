"""Which shards this process leads: its fair share of them, taken and handed over through their
leases, and the fence each of its decisions carries.

Every replica is counted while up (``Membership``), and the replicas keep the shards balanced:
none holds two more than another. A replica takes free shards up to its fair share, and a shard
that stays free for a few beats beyond that (a frozen replica still counts until its session
times out, and its shards must not wait for that); one holding too many hands one over per beat.
What leading a shard means (loading its jobs, recovering its requests) is the service's.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import SQLAlchemyError

from poller.errors import ConfigMismatch, ReplicaIdInUse, StoreUnavailable
from poller.lease import Lease, Membership
from poller.models import LAYOUT_ID, LayoutRow
from poller.schemas import Fence
from poller.shards import (
    LEASES_NAMESPACE,
    MEMBERS_NAMESPACE,
    OUR_LOCKS,
    OUR_LOCKS_PARAMS,
    fair_share,
)

logger = logging.getLogger(__name__)

# Beats a shard must be seen free before a replica at its fair share takes it anyway.
ORPHAN_BEATS = 3
# Beats without a hand-over after one that nobody took (doubling each time, up to the most):
# a replica that counts as a member but never takes would otherwise be handed shards for ever.
GIVE_PAUSE_BEATS = 10
GIVE_PAUSE_MAX_BEATS = 60


@dataclass
class ShardLead:
    """One shard's lease as this process sees it."""

    shard: int
    lease: Lease
    fence: Fence | None = None
    leading: threading.Event = field(default_factory=threading.Event)
    free_beats: int = 0  # beats in a row it was seen free while we were at our share

    def current(self) -> Fence | None:
        """The fence of this shard's decisions: None unless we lead it and know so now."""
        fence = self.fence
        if fence is None or not self.leading.is_set() or not self.lease.valid():
            return None
        return fence


@dataclass(frozen=True)
class Plan:
    """What to change this beat: shards to try to take, and at most one to hand over."""

    take: list[int]
    give: int | None


class Leadership:
    """The shards' leases, and the decision of which to hold."""

    def __init__(
        self,
        leases: list[Lease],
        engine: Engine | None = None,
        membership: Membership | None = None,
        me: str = "",
        offset: int = 0,
    ) -> None:
        """``engine`` and ``membership`` are PostgreSQL's (None: a single process leads every
        shard); ``me`` is this process's session name (``application_name``); ``offset`` is
        where it starts looking for free shards, so replicas starting together try different
        ones first."""
        self.leads = [ShardLead(shard, lease) for shard, lease in enumerate(leases)]
        self.engine = engine
        self.membership = membership
        self.me = me
        self.offset = offset
        self.beat = 0
        self.given: dict[int, int] = {}  # shard handed over -> the beat it was
        self.no_give_until = 0
        self.give_pause = GIVE_PAUSE_BEATS

    @property
    def shards(self) -> int:
        return len(self.leads)

    def held(self) -> list[int]:
        return [lead.shard for lead in self.leads if lead.leading.is_set()]

    def fence(self, shard: int) -> Fence | None:
        return self.leads[shard].current()

    def plan(self) -> Plan:
        """Decide this beat's changes from who holds which shard now. Raises StoreUnavailable
        when it cannot tell, ConfigMismatch when the store is sliced into another count of
        shards now, ReplicaIdInUse while another live process goes by this one's name.

        Balanced means no live replica holds two shards more than another: one above that
        hands a shard over (one per beat, the others see it free next beat); one with the fewest
        takes free shards up to its fair share; a shard free for ``ORPHAN_BEATS`` beats is taken
        by anyone."""
        held = self.held()
        if self.membership is None or self.engine is None:
            return Plan([lead.shard for lead in self.leads if lead.shard not in held], None)
        self.keep()
        holders, members, in_force, twins = self._who()
        if in_force != self.shards:
            raise ConfigMismatch(
                f"POLLER_SHARDS is {self.shards}, but the store is sliced into {in_force} "
                "shard(s) now (another replica settled it): start every replica with that count"
            )
        if twins and not held:  # one that leads already goes on
            raise ReplicaIdInUse(
                f"another live process goes by this replica's name ({self.me!r}, its session "
                f"pid(s) {', '.join(map(str, sorted(twins)))}): waiting for it to go before "
                "taking any shard; give every replica its own POLLER_REPLICA_ID"
            )
        self.beat += 1
        free = {lead.shard for lead in self.leads} - set(holders) - set(held)
        for lead in self.leads:  # counted every beat, whatever this one decides
            lead.free_beats = lead.free_beats + 1 if lead.shard in free else 0
        for shard, at in list(self.given.items()):
            if shard in holders and shard not in held:  # taken by another: a hand-over done
                del self.given[shard]
                self.give_pause = GIVE_PAUSE_BEATS
            elif self.beat - at > ORPHAN_BEATS * 4:
                del self.given[shard]
        plan = balance(self.shards, held, holders, members, self.me, self.offset)
        if plan.give is not None:
            if self.beat < self.no_give_until:
                return Plan([], None)
            self.given[plan.give] = self.beat
            return plan
        take = list(plan.take)
        for lead in self.leads:
            if lead.free_beats >= ORPHAN_BEATS and lead.shard not in take:
                take.append(lead.shard)  # nobody else takes it: we do
        if any(shard in self.given for shard in take):  # handed over, and nobody took it
            self.no_give_until = self.beat + self.give_pause
            self.give_pause = min(self.give_pause * 2, GIVE_PAUSE_MAX_BEATS)
            for shard in take:
                self.given.pop(shard, None)
        return Plan(take, None)

    def keep(self) -> None:
        """Stay counted as a member (PostgreSQL; its session ends after the lease's TTL idle)."""
        if self.membership is not None:
            self.membership.keep()

    def _who(self) -> tuple[dict[int, str], set[str], int, set[int]]:
        """Who holds which shard's lease ({shard: session name}), which replicas are counted
        members (their session names), the store's shard count, and the sessions of other
        members that go by our name: one look at the server's lock table, one at the layout."""
        assert self.engine is not None
        assert self.membership is not None
        try:
            with self.engine.connect() as conn:
                rows = list(
                    conn.execute(
                        text(
                            "SELECT l.classid::bigint AS ns, l.objid::bigint AS shard,"
                            " l.pid AS pid, a.application_name AS name,"
                            " a.backend_start AS since" + OUR_LOCKS
                        ),
                        OUR_LOCKS_PARAMS,
                    )
                )
                in_force = conn.scalar(select(LayoutRow.shards).where(LayoutRow.id == LAYOUT_ID))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}") from exc
        holders = {
            int(row.shard): str(row.name) for row in rows if row.ns == LEASES_NAMESPACE & 0xFFFFFFFF
        }
        members = {str(row.name) for row in rows if row.ns == MEMBERS_NAMESPACE & 0xFFFFFFFF}
        # Of two processes going by one name, the later waits: the first goes on leading.
        named = [
            row for row in rows if row.ns == MEMBERS_NAMESPACE & 0xFFFFFFFF and row.name == self.me
        ]
        mine = [(row.since, row.pid) for row in named if row.pid == self.membership.pid]
        twins = {
            int(row.pid)
            for row in named
            if row.pid != self.membership.pid and (not mine or (row.since, row.pid) < mine[0])
        }
        return holders, members, 1 if in_force is None else int(in_force), twins

    def release_all(self) -> None:
        for lead in self.leads:
            lead.fence = None
            lead.leading.clear()
            lead.lease.release()
        if self.membership is not None:
            self.membership.leave()


def balance(
    shards: int,
    held: list[int],
    holders: dict[int, str],
    members: set[str],
    me: str,
    offset: int = 0,
) -> Plan:
    """This beat's change for replica ``me`` holding ``held``, given who holds which shard
    (``holders``, by session name) and the live replicas (``members``).

    No replica is to hold two shards more than another: one that does hands its highest shard
    over, once no shard is free (a free one goes to a replica with the fewest first). A replica
    with the fewest takes free shards up to its fair share (never the one that just gave a
    shard up, so a shard handed over goes to the replica it was meant for), looking from
    ``offset`` on so that replicas starting together try different shards first."""
    counts = dict.fromkeys(members | {me}, 0)
    for holder in holders.values():
        counts[holder] = counts.get(holder, 0) + 1
    counts[me] = len(held)
    fewest = min(counts.values())
    free = sorted(
        set(range(shards)) - set(holders) - set(held), key=lambda s: (s - offset) % shards
    )
    if held and len(held) > fewest + 1 and not free:
        return Plan([], max(held))
    if len(held) > fewest:
        return Plan([], None)
    room = fair_share(shards, len(counts)) - len(held)
    return Plan(free[: max(0, room)], None)
