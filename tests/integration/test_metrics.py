"""GET /metrics after real jobs ran: the figures moved as the jobs did, and no id is a label."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from poller.devstack import SparkStandalone, wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, NotAliveProxy, ServiceProcess

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(svc: ServiceProcess) -> Samples:
    answer = svc.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for n, ls in samples if n == name]


@pytest.fixture
def not_alive(spark: SparkStandalone) -> Iterator[NotAliveProxy]:
    proxy = NotAliveProxy(spark.rest_url)
    yield proxy
    proxy.close()


def test_metrics_follow_real_jobs(
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
    not_alive: NotAliveProxy,
    database_url: str,
) -> None:
    svc = start_service(
        POLLER_DATABASE_URL=database_url,
        POLLER_SPARK_REST_URL=not_alive.url,
        POLLER_SPARK_TIMEOUT_S="2",
    )
    before = scrape(svc)
    assert value(before, "spark_poller_build_info") == 1
    wait_for(lambda: value(scrape(svc), "spark_poller_scheduler_lease_held") == 1, 30, "lease")

    ok = svc.post(
        "/submit",
        json={"request_id": "m-ok", "job": job_body(seconds=4)},
        headers={"traceparent": TRACEPARENT, "tracestate": "acme=1"},
    )
    bad = svc.post("/submit", json={"request_id": "m-bad", "job": job_body(exit_code=2)})
    assert ok.status_code == 202, ok.text
    assert bad.status_code == 202, bad.text
    assert svc.get("/jobs/no-such-request").status_code == 404
    assert svc.post("/submit", json={"job": {}}).status_code == 422
    for n in range(3):  # odd methods and paths must not make new series
        requests.request(f"PROBE{n}", f"{svc.url}/jobs/x{n}/y", timeout=5)

    # While the drivers run, the master says it is RECOVERING for a while: polls fail, and say so.
    wait_for(lambda: svc.job("m-ok")["polls"] >= 1, 30, "a first poll of m-ok")
    not_alive.state = "RECOVERING"
    wait_for(
        lambda: (
            value(
                scrape(svc),
                "spark_poller_poll_errors_total",
                cluster="default",
                cause="spark_unavailable",
            )
            >= 2
        ),
        30,
        "polls failing while the master recovers",
    )
    # The store figures are sampled every few seconds.
    wait_for(
        lambda: (
            value(scrape(svc), "spark_poller_requests_in_flight", phase="polling") >= 1
            and value(scrape(svc), "spark_poller_job_store_jobs") >= 1
        ),
        15,
        "the polling requests in the sampled store figures",
    )
    not_alive.state = None

    by_key = events.wait_for_keys({"m-ok", "m-bad"})
    assert by_key["m-ok"][0].headers["ce_traceparent"] == TRACEPARENT
    assert by_key["m-ok"][0].headers["ce_tracestate"] == "acme=1"
    assert "ce_traceparent" not in by_key["m-bad"][0].headers
    assert svc.job("m-ok")["traceparent"] == TRACEPARENT

    def settled() -> bool:
        now = scrape(svc)
        return (
            value(now, "spark_poller_events_published_total", state="FINISHED") == 1
            and value(now, "spark_poller_events_published_total", state="FAILED") == 1
            and value(now, "spark_poller_job_store_jobs") == 0
            and value(now, "spark_poller_requests_in_flight") == 0
        )

    wait_for(settled, 30, "both events counted and the store sampled empty")
    after = scrape(svc)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("spark_poller_polls_total", cluster="default", outcome="ended") == 2
    assert moved("spark_poller_polls_total", cluster="default", outcome="running") >= 1
    assert moved("spark_poller_spark_request_duration_seconds_count", call="create") == 2
    assert moved("spark_poller_spark_request_duration_seconds_count", call="status") >= 4
    assert moved("spark_poller_spark_request_errors_total", call="status") >= 2
    assert moved("spark_poller_publish_duration_seconds_count") == 2
    assert moved("spark_poller_submit_to_event_seconds_count") == 2
    assert moved("spark_poller_driver_end_to_event_seconds_count") == 2
    # The m-ok driver ran 4 s at least: its submit-to-event time says so.
    assert moved("spark_poller_submit_to_event_seconds_sum") >= 4
    assert moved("spark_poller_publish_failures_total") == 0
    lag_runs = moved("spark_poller_scheduler_lag_seconds_count")
    assert lag_runs >= 4
    assert moved("spark_poller_scheduler_lag_seconds_sum") / lag_runs < 1.0
    assert value(after, "spark_poller_events_pending") == 0
    assert all(
        value(after, "spark_poller_longest_in_phase_seconds", phase=phase) == 0
        for phase in ("submitting", "polling", "cancelling", "publishing")
    )

    http = "spark_poller_http_requests_total"
    assert moved(http, method="POST", route="/submit", status="202") == 2
    assert moved(http, method="POST", route="/submit", status="422") == 1
    assert moved(http, method="GET", route="/jobs/{request_id}", status="404") == 1
    assert moved(http, method="GET", route="/jobs/{request_id}", status="200") >= 1
    assert value(after, "spark_poller_http_request_duration_seconds_count", route="/submit") >= 3
    assert moved(http, method="other", route="<unmatched>") == 3

    # Never an id as a label: series stay bounded however many requests pass.
    text = svc.get("/metrics").text
    for request_id in ("m-ok", "m-bad", "no-such-request", "driver-", "PROBE", "x1"):
        assert request_id not in text
    routes = {labels["route"] for labels in series(after, http)}
    assert routes <= {
        "/submit",
        "/jobs",
        "/jobs/{request_id}",
        "/metrics",
        "/healthz",
        "/readyz",
        "<unmatched>",
    }
    assert all(math.isfinite(v) for v in after.values())


def test_metrics_follow_the_health_checks_auth_rules(start_service: ServiceFactory) -> None:
    token = "metrics-test-token-0123456789"
    svc = start_service(POLLER_API_TOKEN=token)
    assert svc.get("/metrics").status_code == 200  # open, like /healthz
    assert requests.get(f"{svc.url}/jobs", timeout=5).status_code == 401
    text = svc.get("/metrics").text
    assert 'route="/jobs",status="401"' in text  # refused requests are counted too
    svc.terminate()

    strict = start_service(POLLER_API_TOKEN=token, POLLER_HEALTH_REQUIRES_TOKEN="true")
    assert requests.get(f"{strict.url}/metrics", timeout=5).status_code == 401
    answer = requests.get(
        f"{strict.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert answer.status_code == 200
    assert "spark_poller_build_info" in answer.text


def test_only_the_leader_serves_the_store_figures(
    start_service: ServiceFactory, job_body: JobBody, events: EventReader
) -> None:
    """Every replica sees the same store: summed on a dashboard, each would count every request
    once per replica. The standby serves its own counters, not the store's figures."""
    leader = start_service()
    wait_for(lambda: value(scrape(leader), "spark_poller_scheduler_lease_held") == 1, 30, "lease")
    standby = start_service()
    answer = standby.post("/submit", json={"request_id": "m-standby", "job": job_body(seconds=2)})
    assert answer.status_code == 202, answer.text
    wait_for(
        lambda: series(scrape(leader), "spark_poller_requests_in_flight") != [],
        15,
        "the leader's store figures",
    )
    on_standby = scrape(standby)
    assert value(on_standby, "spark_poller_scheduler_lease_held") == 0
    for name in ("spark_poller_requests_in_flight", "spark_poller_job_store_jobs"):
        assert series(on_standby, name) == []
    assert value(on_standby, "spark_poller_http_requests_total", route="/submit") == 1
    events.wait_for_keys({"m-standby"})

    leader.kill9()  # the standby takes over, and with the lease its figures
    wait_for(
        lambda: (
            value(scrape(standby), "spark_poller_scheduler_lease_held") == 1
            and series(scrape(standby), "spark_poller_job_store_jobs") != []
        ),
        30,
        "the former standby leading and serving the store figures",
    )
    assert value(scrape(standby), "spark_poller_lease_changes_total", change="taken") == 1
