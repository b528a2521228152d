"""Prometheus metrics: what the service is doing, scraped at ``GET /metrics``.

Counters and histograms are updated where things happen; figures that need the database (requests in
flight, job store size) come from a snapshot taken in the background, so a scrape never waits on a
dependency. No label ever holds a request or submission id: their number is unbounded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "spark_poller_"
# Seconds: from a fast local call to a Spark call that used up its retries.
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds: a driver's run, from a few seconds to a day.
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
# Seconds: an event's way out once the ending is seen, and a poll's lateness.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

POLLS = Counter(
    PREFIX + "polls",
    "Poll runs, by cluster and outcome (running, ended, unknown: Spark does not know the driver; "
    "skipped: the request was busy; the cluster label is empty when no cluster was reached).",
    ["cluster", "outcome"],
)
POLL_ERRORS = Counter(
    PREFIX + "poll_errors",
    "Poll runs that failed and are retried on the next run, by cluster and cause "
    "(spark_unavailable, spark_error, database, other).",
    ["cluster", "cause"],
)
STATUS_ANSWERS = Counter(
    PREFIX + "status_answers",
    "Driver states the polls got, by cluster and source (view: the master's /json/ cluster "
    "view; rest: a REST status call).",
    ["cluster", "source"],
)
SPARK_CALL_SECONDS = Histogram(
    PREFIX + "spark_request_duration_seconds",
    "Spark calls (REST create, status, kill; view: the web UI's /json/; log: a driver's log on "
    "its worker) with their retries and master failover.",
    ["cluster", "call"],
    buckets=CALL_BUCKETS,
)
SPARK_CALL_ERRORS = Counter(
    PREFIX + "spark_request_errors",
    "Spark REST calls that failed, by cause (unavailable, rejected; backing_off: not sent, "
    "the cluster is backed off after failures).",
    ["cluster", "call", "cause"],
)
EVENTS_PUBLISHED = Counter(
    PREFIX + "events_published",
    "Completion events the broker acknowledged, by the request's final state.",
    ["state"],
)
EVENTS_REPUBLISHED = Counter(
    PREFIX + "events_republished",
    "Completion events published again on request (POST /jobs/{request_id}/republish) and "
    "acknowledged, by the request's final state.",
    ["state"],
)
PUBLISH_SECONDS = Histogram(
    PREFIX + "publish_duration_seconds",
    "From handing an event to the producer to the broker's ack.",
    buckets=LAG_BUCKETS,
)
PUBLISH_FAILURES = Counter(
    PREFIX + "publish_failures",
    "Event sends that failed and wait for a retry, by cause (refused: could not be queued; "
    "delivery: the broker did not take it; no_report: no delivery report in time; build: the "
    "record could not be turned into an event).",
    ["cause"],
)
SUBMIT_TO_EVENT_SECONDS = Histogram(
    PREFIX + "submit_to_event_seconds",
    "From the request's submission to the broker's ack of its completion event.",
    buckets=RUN_BUCKETS,
)
END_TO_EVENT_SECONDS = Histogram(
    PREFIX + "driver_end_to_event_seconds",
    "From the poll that saw the driver end (the record's completed_at) to the broker's ack.",
    buckets=LAG_BUCKETS,
)
REQUESTS_PURGED = Counter(
    PREFIX + "requests_purged",
    "Finished requests deleted after POLLER_RETENTION_DAYS.",
)
FAILURE_LOOKUP_SECONDS = Histogram(
    PREFIX + "failure_lookup_seconds",
    "What reading a failed driver's log for its reason added to its ending: reason (found), "
    "no_reason (the log told none), no_log (the log could not be had in time).",
    ["cluster", "outcome"],
    buckets=CALL_BUCKETS,
)
SCHEDULER_LAG_SECONDS = Histogram(
    PREFIX + "scheduler_lag_seconds",
    "How late a poll run starts: its start on a worker thread minus its scheduled run time.",
    buckets=LAG_BUCKETS,
)
LEASE_HELD = Gauge(
    PREFIX + "scheduler_lease_held",
    "1 while this process holds the scheduler lease of the shard and polls it, else 0.",
    ["shard"],
)
LEASE_CHANGES = Counter(
    PREFIX + "lease_changes",
    "Times this process took or lost the scheduler lease.",
    ["change"],
)
HTTP_REQUESTS = Counter(
    PREFIX + "http_requests",
    "HTTP requests, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    PREFIX + "http_request_duration_seconds",
    "HTTP request handling time, by method and route template.",
    ["method", "route"],
    buckets=CALL_BUCKETS,
)
BUILD_INFO = Gauge(PREFIX + "build_info", "The running version.", ["version"])


def package_version() -> str:
    try:
        return version("spark-poller")
    except PackageNotFoundError:
        return "unknown"


BUILD_INFO.labels(package_version()).set(1)


@dataclass(frozen=True)
class StoreSnapshot:
    """Counts read from the database in one background pass."""

    in_flight: dict[tuple[str, str], int] = field(default_factory=dict)  # (cluster, phase)
    longest_in_phase_s: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    job_store_jobs: int = 0
    most_overdue_s: float = 0.0  # how late the most overdue poll job is; 0 when none


# Every phase a request passes through before it is done: reported even when empty, so an alert on
# one never sees "no data" where it should see 0.
OPEN_PHASES = ("submitting", "polling", "cancelling", "publishing")


class StoreCollector(Collector):
    """Serves the latest :class:`StoreSnapshot` (set by the service's background sampler)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: StoreSnapshot | None = None

    def update(self, snapshot: StoreSnapshot | None) -> None:
        with self._lock:
            self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = self._snapshot
        if snapshot is None:  # not sampled yet, or not this process's business any more
            return
        in_flight = GaugeMetricFamily(
            PREFIX + "requests_in_flight",
            "Requests not done yet, by cluster and phase.",
            labels=["cluster", "phase"],
        )
        for (cluster, phase), count in sorted(snapshot.in_flight.items()):
            in_flight.add_metric([cluster, phase], count)
        yield in_flight
        in_phase = GaugeMetricFamily(
            PREFIX + "longest_in_phase_seconds",
            "How long the request longest in each phase has been in it (0 when none): since the "
            "submission (submitting, polling), the cancel (cancelling), the ending (publishing).",
            labels=["phase"],
        )
        for phase in OPEN_PHASES:
            in_phase.add_metric([phase], snapshot.longest_in_phase_s.get(phase, 0.0))
        yield in_phase
        pending = sum(n for (_, phase), n in snapshot.in_flight.items() if phase == "publishing")
        yield GaugeMetricFamily(
            PREFIX + "events_pending",
            "Completion events waiting for the broker's ack (requests in phase publishing).",
            value=pending,
        )
        yield GaugeMetricFamily(
            PREFIX + "job_store_jobs",
            "Poll jobs in the APScheduler job store.",
            value=snapshot.job_store_jobs,
        )
        yield GaugeMetricFamily(
            PREFIX + "poll_overdue_seconds",
            "How late the most overdue poll job is now (0 when none is late).",
            value=snapshot.most_overdue_s,
        )


STORE = StoreCollector()
REGISTRY.register(STORE)


def exposition() -> tuple[bytes, str]:
    """The scrape body and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
