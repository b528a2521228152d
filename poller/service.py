"""Composition root and lifecycle: builds every part from Settings, starts, leads, stops."""

from __future__ import annotations

import functools
import gc
import logging
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection

from poller import polling
from poller.apps import AppLinker
from poller.config import Settings
from poller.db import create_db_engine
from poller.errors import ConfigMismatch, PollerError
from poller.events import EventPublisher, producer_config
from poller.finder import DriverFinder
from poller.health import HealthMonitor
from poller.jobs import Jobs, submit_grace_s
from poller.jobstore import jobs_channel
from poller.leadership import Leadership, ShardLead
from poller.lease import Membership, lease_for
from poller.lookup import ClusterLogs, FailureLookup
from poller.masking import Masker, secret_values
from poller.master_view import MasterView, SharedView
from poller.metrics import LEASE_CHANGES, LEASE_HELD, OPEN_PHASES, STORE, StoreSnapshot
from poller.outbox import Outbox
from poller.polling import Poller, PollPolicy
from poller.retention import Retention
from poller.scheduler import PollScheduler
from poller.schemas import Fence
from poller.spark import SparkClient
from poller.status_source import StatusSource
from poller.store import RequestStore
from poller.worker_logs import WorkerLogs

logger = logging.getLogger(__name__)

JOB_FUNC = "poller.polling:run_poll"
WATCHDOG_STEP_S = 1.0
# Longer than any one watchdog step can take (each database call in it is bounded).
WATCHDOG_SILENT_S = 60.0
FAILURE_REPEAT_S = 60.0
PENDING_WRITES_FLUSH_S = 5.0
LEASE_RETRY_S = 1.0
IDLE_IN_TRANSACTION_S = 60.0  # our transactions wait on the server, never on us, for long
RECOVERY_STEP_S = 5.0
# How often the leader of shard 0 deletes requests past the retention (a bounded turn each time).
PURGE_STEP_S = 10.0
HEALTH_CHECK_PERIOD_S = 2.0
HEALTH_STALE_AFTER_S = 15.0
METRICS_SAMPLE_PERIOD_S = 5.0
POLL_COUNTS_FLUSH_S = 5.0
VIEW_MAX_AGE_CAP_S = 10.0


class Service:
    """The running service: request store, Spark clients, event publisher, poll scheduler."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.replica = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        # Its sessions' application_name: pg_stat_activity, and the shards' holders, by replica.
        self.session_name = session_name(self.replica)
        # Every thread that may use the database at once: poll runs, API handlers, and ours
        # (lease, outbox, health, watchdog, scheduler loop).
        self.engine = create_db_engine(
            settings.database_url.get_secret_value(),
            # and the sessions held for good: one per shard's lease, one for membership.
            pool_size=settings.scheduler_threads + settings.api_threads + 5 + settings.shards + 1,
            timeout_s=settings.database_timeout_s,
            application_name=self.session_name,
            # A session frozen inside a transaction (its process SIGSTOPped) ends, and the row
            # locks it holds go, well before a new leader's retries of those rows give up.
            idle_in_transaction_s=IDLE_IN_TRANSACTION_S,
        )
        self.store = RequestStore(self.engine)
        self.clusters = {
            name: SparkClient(
                name,
                cluster,
                settings.spark_timeout_s,
                settings.spark_client_version,
                pool_size=settings.scheduler_threads + settings.api_threads,
            )
            for name, cluster in settings.clusters.items()
        }
        self.publisher = EventPublisher(
            producer_config(settings),
            settings.kafka_topic,
            settings.event_source,
            settings.kafka_delivery_timeout_s,
            self.replica,
        )
        self.scheduler = PollScheduler(
            self.engine,
            JOB_FUNC,
            settings.poll_interval_seconds,
            settings.scheduler_threads,
            settings.shards,
        )
        policy = PollPolicy(
            lost_after_unknown_polls=settings.lost_after_unknown_polls,
            max_submitted_s=settings.max_submitted_s,
            max_tracking_s=settings.max_tracking_s,
            kill_on_timeout=settings.kill_on_timeout,
            kill_confirm_timeout_s=settings.kill_confirm_timeout_s,
            detection_bound_s=detection_bound_s(settings),
            create_window_s=submit_grace_s(self.clusters),
        )
        self.outbox = Outbox(
            self.store,
            self.publisher,
            self.scheduler.remove_many,
            stuck_after_s=settings.kafka_delivery_timeout_s + 5,
        )
        # Each cluster's master view: the polls' source of states ("view"), and where a failed
        # driver's worker is found.
        self.views = {
            name: MasterView(name, client.cluster, settings.spark_timeout_s, client.alive_master)
            for name, client in self.clusters.items()
        }
        self.sources = {
            name: StatusSource(
                client,
                None if settings.status_source == "rest" else self.views[name],
                view_max_age_s(settings),
                wake=self.scheduler.wake,
            )
            for name, client in self.clusters.items()
        }
        # The same, with submission times and applications, fetched only when needed.
        self.shared_views = {
            name: SharedView(view, settings.spark_timeout_s) for name, view in self.views.items()
        }
        self.worker_logs = {name: WorkerLogs(name) for name, client in self.clusters.items()}
        lookup = FailureLookup(
            {
                name: ClusterLogs(self.views[name], self.worker_logs[name], source.latest_view)
                for name, source in self.sources.items()
            },
            settings.failure_lookup_s,
            settings.failure_log_tail_bytes,
            Masker(secret_values(settings)),
        )
        self.retention = Retention(self.store, settings.retention_days)
        self.poller = Poller(
            self.store,
            self.clusters,
            self.sources,
            self.outbox,
            self.scheduler.remove,
            policy,
            fence=self.fence,
            lookup=lookup if settings.failure_lookup_s > 0 else None,
            linkers={name: AppLinker(view) for name, view in self.shared_views.items()},
            finders={
                name: DriverFinder(
                    self.shared_views[name], self.worker_logs[name], settings.spark_timeout_s
                )
                for name in self.clusters
            },
        )
        self.jobs = Jobs(
            settings, self.store, self.clusters, self.scheduler, self.poller, self.outbox
        )
        url = settings.database_url.get_secret_value()
        leases = []
        for shard in range(settings.shards):
            lease = lease_for(
                url, self.engine, settings.lease_ttl_s, channel=jobs_channel(shard), shard=shard
            )
            lease.on_notify = functools.partial(self.scheduler.notified, shard=shard)
            lease.on_lost = functools.partial(self._lease_lost, shard)
            leases.append(lease)
        shared = self.engine.dialect.name == "postgresql"
        self.leadership = Leadership(
            leases,
            self.engine if shared else None,
            Membership(self.engine, settings.lease_ttl_s) if shared else None,
            me=self.session_name,
            offset=zlib.crc32(self.replica.encode()) % settings.shards,
        )
        for lead in self.leadership.leads:
            lead.lease.on_taken = functools.partial(self._taken, lead)
        self.health = HealthMonitor(
            {"database": self._check_database, "kafka": self.publisher.problem},
            period_s=HEALTH_CHECK_PERIOD_S,
            stale_after_s=HEALTH_STALE_AFTER_S,
        )
        self.sampler = HealthMonitor(
            {"metrics": self._sample_store},
            period_s=METRICS_SAMPLE_PERIOD_S,
            stale_after_s=HEALTH_STALE_AFTER_S,
        )
        self.fatal: str | None = None
        self.on_fatal: Callable[[str], None] | None = None
        self._stopping = threading.Event()
        self._activated = threading.Event()
        self._stepping_down = threading.Lock()
        for shard in range(settings.shards):  # a shard nobody holds shows as 0 everywhere
            LEASE_HELD.labels(str(shard)).set(0)
        self._watchdog: threading.Thread | None = None
        self._beats = _Beats()
        self.heartbeat = time.monotonic()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Create tables and start the scheduler paused.

        From here the API records requests and their poll jobs, but nothing is recovered or polled
        until :meth:`activate` has been called and this process holds the scheduler lease."""
        self.store.create_schema(auto_migrate=self.settings.auto_migrate)
        self._check_shards()
        polling.install(self.poller)
        self.outbox.start()
        self.scheduler.start()
        self.health.start()
        self.sampler.start(first_answer_s=0)
        self._watchdog = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._watchdog.start()
        logger.info(
            "service started: %d cluster(s), poll interval %.3gs, topic %s",
            len(self.clusters),
            self.settings.poll_interval_seconds,
            self.settings.kafka_topic,
        )

    def _check_shards(self) -> None:
        """Requests in flight were placed in shards by the count in force: another count would
        look for them in the wrong job tables, so it is refused until none is in flight."""
        self.store.settle_shards(self.settings.shards)

    def activate(self) -> None:
        """The HTTP socket is bound: from now on the watchdog competes for the scheduler lease."""
        self._activated.set()

    @property
    def role(self) -> str:
        """ "leader" while this process leads any shard, else "standby"."""
        return "leader" if self.leadership.held() else "standby"

    def shards_held(self) -> list[int]:
        return self.leadership.held()

    def fence(self, request_id: str) -> Fence | None:
        """The fence of this process's decisions about ``request_id``: None unless it leads the
        request's shard and knows so now (a process that woke from a freeze longer than the
        lease does not)."""
        return self.leadership.fence(self.scheduler.shard_of(request_id))

    def stop(self) -> None:
        """Let running polls finish, flush the producer, release the lease and connections."""
        self._stopping.set()
        # Running polls may finish, within a bound: an interrupted one is redone after restart.
        stopper = threading.Thread(
            target=self.scheduler.shutdown, name="scheduler-stop", daemon=True
        )
        stopper.start()
        stopper.join(self.settings.shutdown_timeout_s)
        if stopper.is_alive():
            logger.warning(
                "polls still running after %.0fs; stopping without them",
                self.settings.shutdown_timeout_s,
            )
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
        # No run of ours decides anything from here (a poll still running finds its fence gone)
        # and nothing more is written to the job tables (the scheduler's stop wrote the run
        # times, unless polls outlived it); the leases go once our events are flushed.
        with self._stepping_down:
            for lead in self.leadership.leads:
                lead.fence = None
                self._set_leading(lead, False)
                self.scheduler.drop(lead.shard)
        self.jobs.flush_pending_writes(PENDING_WRITES_FLUSH_S)
        try:
            self.store.flush_poll_counts()
        except PollerError as exc:
            logger.warning("poll counts not saved at stop: %s", exc.message)
        self.health.stop()
        self.sampler.stop()
        self.publisher.close()  # flushes: the reports of events still on their way arrive
        self.outbox.stop()
        polling.install(None)
        self.leadership.release_all()  # the others take our shards at their next beat
        for client in self.clusters.values():
            client.close()
        for view in self.views.values():
            view.close()
        for logs in self.worker_logs.values():
            logs.close()
        self.engine.dispose()
        logger.info("service stopped")

    def reconcile(self, shard: int = 0, load_jobs: bool = False) -> tuple[int, int]:
        """Make the poll jobs of ``shard`` match our records: re-create missing ones, drop
        orphans.

        ``load_jobs`` compares the jobs held in memory (taking the lead loaded them, dropping rows
        that would not unpickle), which start-up wants; the periodic check reads the table's ids.
        Jobs are read before records so a request finishing in between is never given a fresh job.
        """
        scheduler = self.scheduler
        jobs = scheduler.job_ids(shard) if load_jobs else scheduler.stored_ids(shard)
        active = {rid for rid in self.store.active_ids() if scheduler.shard_of(rid) == shard}
        missing = active - jobs
        orphans = jobs - active
        now = datetime.now(UTC)
        for request_id in sorted(missing):
            self.scheduler.add(request_id, first_run_at=now)
        for request_id in sorted(orphans):  # from this table, whichever shard it hashes to
            self.scheduler.remove(request_id, shard)
        if missing or orphans:
            logger.warning(
                "reconciled poll jobs: re-created %d missing (%s), removed %d orphan(s) (%s)",
                len(missing),
                _sample(missing),
                len(orphans),
                _sample(orphans),
            )
        elif load_jobs:
            logger.info("poll jobs match records: %d in flight", len(active))
        return len(missing), len(orphans)

    def _watch(self) -> None:
        """Exit rather than sit alive with a dead scheduler; hold the lease; repair now and then.

        A failing step (the database away, a lease file it cannot open) is logged and retried on
        the next beat: the loop itself never ends but by a stop or a fatal error."""
        while not self._stopping.wait(WATCHDOG_STEP_S):
            self.heartbeat = time.monotonic()
            if self.fatal is not None:
                return
            if not self.scheduler.alive():
                self._die("the scheduler thread died")
                return
            try:
                self._watch_step(self.heartbeat)
            except ConfigMismatch as exc:  # another replica settled another shard count
                for lead in self.leadership.leads:
                    self._step_down(lead)
                self._die(exc.message)
                return
            except Exception as exc:
                self._beats.failed(exc)
            else:
                self._beats.problem = None
            self._flush_poll_counts(self.heartbeat)

    def _flush_poll_counts(self, now: float) -> None:
        """Write the polls counted in memory, every few seconds: apart from the lease's beat, so
        a failing write never delays noticing a lost lease (the counts wait for the next try)."""
        beats = self._beats
        if now < beats.next_counts_flush:
            return
        beats.next_counts_flush = now + POLL_COUNTS_FLUSH_S
        try:
            self.store.flush_poll_counts()
        except Exception as exc:
            if now - beats.counts_failed_at > FAILURE_REPEAT_S:
                beats.counts_failed_at = now
                logger.warning("poll counts not written yet, retrying: %s", exc)

    def _watch_step(self, now: float) -> None:
        beats = self._beats
        if self.jobs.pending_writes:
            self.jobs.retry_pending_writes()
        if not self._activated.is_set():
            return
        leadership = self.leadership
        for lead in leadership.leads:
            if lead.leading.is_set() and not lead.lease.holding():
                self._step_down(lead)
        if now >= beats.next_lease_try:
            beats.next_lease_try = now + LEASE_RETRY_S
            plan = leadership.plan()
            if plan.give is not None:
                self._hand_over(leadership.leads[plan.give])
            for shard in plan.take:
                if self._stopping.is_set():  # the stop hands the shards over: take none
                    return
                leadership.keep()  # counted still, however long the takes before took
                lead = leadership.leads[shard]
                if lead.lease.try_acquire() and self._lead(lead):
                    beats.led(now, self.settings.reconcile_interval_s)
            if not leadership.held():
                beats.standing_by(leadership.leads[0].lease.description)
        held = [lead for lead in leadership.leads if lead.current() is not None]
        if not held:  # none, or none confirmed lately (a freeze, a slow check): decide nothing
            return
        if now >= beats.next_recovery:
            beats.next_recovery = now + RECOVERY_STEP_S
            self.jobs.recover_submissions(self._held_shards())
        if now >= beats.next_reconcile:
            beats.next_reconcile = now + self.settings.reconcile_interval_s
            for lead in held:
                self.reconcile(lead.shard)
        if now >= beats.next_purge and any(lead.shard == 0 for lead in held):
            beats.next_purge = now + PURGE_STEP_S
            self.retention.purge(datetime.now(UTC))

    def _held_shards(self) -> set[int]:
        return {lead.shard for lead in self.leadership.leads if lead.current() is not None}

    def _lease_lost(self, shard: int) -> None:
        """A lease keeper saw its lease go (the session ended): stop that shard at once, not at
        the watchdog's next beat."""
        self._step_down(self.leadership.leads[shard])

    def _step_down(self, lead: ShardLead) -> None:
        """No more runs, decisions or events for the shard: another process may lead it now."""
        with self._stepping_down:
            if not lead.leading.is_set():
                return
            lead.fence = None
            self._set_leading(lead, False)
            self.scheduler.drop(lead.shard)  # before anything else
            if not self.leadership.held():
                self.scheduler.idle()
                self._beats.lost()
        if not self.leadership.held():  # others' events stay: ours for a shard still led
            self.publisher.drop_queued()  # the new leaders publish them
        logger.error(
            "lost the scheduler lease of shard %d: stopped polling it; %s",
            lead.shard,
            f"still leading {self.leadership.held()}" if self.leadership.held() else "standing by",
        )

    def _hand_over(self, lead: ShardLead) -> None:
        """Give a shard up on purpose (another replica joined): its runs stop, its next run
        times are written, then its lease goes, and a replica below its share takes it."""
        try:
            with self._stepping_down:
                if not lead.leading.is_set():
                    return
                lead.fence = None
                self._set_leading(lead, False)
                self.scheduler.hand_over(lead.shard)
                if not self.leadership.held():
                    self.scheduler.idle()
        finally:
            lead.lease.release()  # never held without being led
        logger.info("handed shard %d over (its fair share for another replica)", lead.shard)

    def _taken(self, lead: ShardLead, session: Connection | None) -> None:
        """A shard's lease was just taken: count it (on the session holding it, where there is
        one) and keep the fence of our decisions about it from now on."""
        lead.fence = self.store.take_lease(lead.shard, self.replica, self.settings.shards, session)

    def _lead(self, lead: ShardLead) -> bool:
        """This process just took the lease of a shard: repair its requests, then poll them."""
        shard = lead.shard
        in_shard = self.scheduler.shard_of
        try:
            stranded = {
                cluster: ids
                for cluster, all_ids in self.store.asking_spark_outside(self.clusters).items()
                if (ids := [rid for rid in all_ids if in_shard(rid) == shard])
            }
            unknown = sorted(set(stranded) - set(self.settings.retired_clusters))
            if unknown:
                lead.lease.release()
                self._die(
                    "requests in flight on cluster(s) no longer configured: "
                    + ", ".join(f"{c!r} ({len(stranded[c])})" for c in unknown)
                    + "; configure them again in POLLER_CLUSTERS, or list them in "
                    "POLLER_RETIRED_CLUSTERS to end those requests as LOST"
                )
                return False
            self.jobs.retire(stranded)
            self.jobs.recover_submissions({shard})
            loaded_at = datetime.now(UTC)
            self.scheduler.lead(shard)
            self.reconcile(shard, load_jobs=True)
            overdue = self.scheduler.spread_overdue(
                self.settings.poll_interval_seconds, stored_before=loaded_at, shard=shard
            )
            # What a lead loads lives long: kept out of the cyclic collector's full passes,
            # which stall every thread (100 ms at 10,000 jobs). Every lead's, not only the
            # first's; the jobs of a shard given up are still freed (they hold no cycles).
            gc.collect()
            gc.freeze()
        except Exception as exc:
            logger.warning("could not take over shard %d yet: %s; retrying", shard, exc)
            self.scheduler.drop(shard)
            if not self.leadership.held():
                self.scheduler.idle()
            lead.fence = None
            lead.lease.release()
            return False
        with self._stepping_down:
            fence = lead.fence
            ready = shard in self.scheduler.owned() and fence is not None
            stopping = self._stopping.is_set()  # the stop hands shards over: this one too
            if stopping or not lead.lease.holding() or fence is None or not ready:
                self.scheduler.drop(shard)
                if not self.leadership.held():
                    self.scheduler.idle()
                lead.fence = None
                lead.lease.release()  # never held without being led
                return False
            self._set_leading(lead, True)
            self.scheduler.resume()
        logger.info(
            "holding the scheduler lease (%s, epoch %d, as %s): polling; %d overdue poll(s) "
            "spread over %.3gs",
            lead.lease.description,
            fence.epoch,
            self.replica,
            overdue,
            self.settings.poll_interval_seconds,
        )
        return True

    def _set_leading(self, lead: ShardLead, leading: bool) -> None:
        if leading == lead.leading.is_set():
            return
        if leading:
            lead.leading.set()
        else:
            lead.leading.clear()
        LEASE_HELD.labels(str(lead.shard)).set(1 if leading else 0)
        if not leading and lead.shard == 0:
            STORE.update(None)  # the store's figures are shard 0's leader's to report
        LEASE_CHANGES.labels("taken" if leading else "lost").inc()

    def _sample_store(self) -> str | None:
        """Read the figures /metrics serves from the database (every few seconds, in the
        background: a scrape never waits on the database).

        Only the leader serves them: they describe the whole store, and replicas summed on a
        dashboard would count each request once per replica. Figures it cannot read are
        dropped rather than frozen: a stale 0 would hide a stall from every alert."""
        if 0 not in self.leadership.held():
            STORE.update(None)
            return None
        try:
            groups = self.store.open_counts()
            jobs, earliest = self.scheduler.store_stats()
        except Exception as exc:
            STORE.update(None)
            return exc.message if isinstance(exc, PollerError) else type(exc).__name__
        now = datetime.now(UTC)
        in_phase: dict[str, float] = {}
        for _cluster, phase, _count, entered_at in groups:
            age_s = max(0.0, (now - entered_at).total_seconds())
            in_phase[phase] = max(in_phase.get(phase, 0.0), age_s)
        STORE.update(
            StoreSnapshot(
                # Every configured cluster in every phase, 0 when empty: an alert sees 0, not
                # "no data".
                in_flight={
                    **{(name, phase): 0 for name in self.clusters for phase in OPEN_PHASES},
                    **{(cluster, phase): count for cluster, phase, count, _ in groups},
                },
                longest_in_phase_s=in_phase,
                job_store_jobs=jobs,
                most_overdue_s=0.0
                if earliest is None
                else max(0.0, (now - earliest).total_seconds()),
            )
        )
        return None

    def _die(self, reason: str) -> None:
        self.fatal = reason
        logger.critical("fatal: %s; stopping", reason)
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def healthy(self) -> bool:
        """The scheduler thread runs and the watchdog beats (it holds the lease and repairs)."""
        return (
            self.fatal is None
            and self.scheduler.alive()
            and time.monotonic() - self.heartbeat < WATCHDOG_SILENT_S
        )

    def readiness(self) -> dict[str, str]:
        """Each dependency's state: "ok" or what is wrong with it. Never waits on one."""
        checks = self.health.problems()
        if not self.healthy():
            checks["scheduler"] = self.fatal or "not running"
        else:
            checks["scheduler"] = self._beats.problem or "ok"
        return checks

    def _check_database(self) -> str | None:
        try:
            self.store.ping()
        except PollerError as exc:
            return exc.message
        return None


def view_max_age_s(settings: Settings) -> float:
    """How old a cluster view a poll may use: it bounds how much later an ending is seen."""
    if settings.status_view_max_age_s is not None:
        return settings.status_view_max_age_s
    return min(VIEW_MAX_AGE_CAP_S, settings.poll_interval_seconds / 3)


def detection_bound_s(settings: Settings) -> float:
    """At most how long after Spark's ending a running service sees it: a poll interval, plus
    the age of the cluster view that poll may use."""
    view = view_max_age_s(settings) if settings.status_source == "view" else 0.0
    return settings.poll_interval_seconds + view


class _Beats:
    """When the watchdog does each of its chores next, and what it last said."""

    def __init__(self) -> None:
        self.next_lease_try = 0.0
        self.next_recovery = self.next_reconcile = 0.0
        self.next_counts_flush = 0.0
        self.next_purge = 0.0
        self.counts_failed_at = float("-inf")
        self._said_standby = False
        self.problem: str | None = None  # why the last step failed, until one succeeds
        self._last_failure = ""
        self._last_failure_at = float("-inf")

    def led(self, now: float, reconcile_interval_s: float) -> None:
        self.next_recovery = now + RECOVERY_STEP_S
        self.next_reconcile = now + reconcile_interval_s

    def standing_by(self, lease: str) -> None:
        if not self._said_standby:
            self._said_standby = True
            logger.warning(
                "standby: another process holds the scheduler lease (%s); serving the API and "
                "waiting for it",
                lease,
            )

    def lost(self) -> None:
        self._said_standby = False

    def failed(self, exc: Exception) -> None:
        """Log a failing step once a minute, not once a second."""
        text = str(exc) or type(exc).__name__
        self.problem = text
        now = time.monotonic()
        if text != self._last_failure or now - self._last_failure_at > FAILURE_REPEAT_S:
            self._last_failure, self._last_failure_at = text, now
            logger.warning("watchdog step failed, retrying every %.0fs: %s", WATCHDOG_STEP_S, text)


def session_name(replica: str) -> str:
    """The ``application_name`` of a replica's sessions, by which the replicas tell each other
    apart: PostgreSQL keeps 63 bytes of printable ASCII, so a longer or other name is shortened
    to its start and a checksum of the whole (two long pod names differ only at the end)."""
    name = f"spark-poller {replica}"
    if len(name) <= 63 and name.isascii() and name.isprintable():
        return name
    start = "".join(c if c.isascii() and c.isprintable() else "?" for c in replica)[:40]
    return f"spark-poller {start}~{zlib.crc32(replica.encode()):08x}"


def _sample(ids: set[str], limit: int = 5) -> str:
    shown = sorted(ids)[:limit]
    return ", ".join(shown) + (", ..." if len(ids) > limit else "")


__all__ = ["PollerError", "Service"]
