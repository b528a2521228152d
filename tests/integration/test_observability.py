"""deploy/observability against a live service: every series the alert rules and the dashboard
read is one that GET /metrics really serves, with the labels they select and group by."""

from __future__ import annotations

import uuid
from collections import defaultdict

import promql_parser as pq
from prometheus_client.parser import text_string_to_metric_families

from poller.devstack import wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, ServiceProcess
from tests.unit.test_deploy import (
    PROMETHEUS_SERIES,
    TARGET_LABELS,
    expressions,
    groupings,
    run_tool,
    selectors,
)

SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def served(svc: ServiceProcess) -> tuple[str, dict[str, set[str] | None]]:
    """The scrape, and each series name it declares with the labels its samples carry (None for a
    family declared but with no sample yet, such as a labelled counter that never counted)."""
    text = svc.get("/metrics").text
    series: dict[str, set[str] | None] = {}
    for family in text_string_to_metric_families(text):
        names = [family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))]
        labels: dict[str, set[str]] = defaultdict(set)
        for sample in family.samples:
            labels[sample.name] |= set(sample.labels)
        for name in names:
            series[name] = labels.get(name)
    return text, series


def test_alerts_and_dashboard_read_series_the_service_serves(
    start_service: ServiceFactory, job_body: JobBody, events: EventReader
) -> None:
    svc = start_service()
    request_id = f"observed-{uuid.uuid4().hex[:8]}"
    answer = svc.post("/submit", json={"request_id": request_id, "job": job_body()})
    assert answer.status_code == 202, answer.text
    events.wait_for_keys({request_id})

    def sampled() -> bool:
        # The store figures come from a background pass; the counters move as things happen.
        _, series = served(svc)
        return bool(series.get("spark_poller_requests_in_flight")) and bool(
            series.get("spark_poller_events_published_total")
        )

    wait_for(sampled, 60, "the store figures and the published event in /metrics")
    text, series = served(svc)

    missing: list[str] = []
    wrong_labels: list[str] = []
    unchecked: set[str] = set()
    for where, expr in expressions():
        parsed = pq.parse(expr)
        for selector in selectors(parsed):
            if selector.metric in PROMETHEUS_SERIES:
                continue
            if selector.metric not in series:
                missing.append(f"{where}: {selector.metric}")
                continue
            labels = series[selector.metric]
            if labels is None:
                unchecked.add(selector.metric)
            elif not selector.labels <= labels | TARGET_LABELS:
                wrong_labels.append(f"{where}: {selector.metric} has no {selector.labels - labels}")
        for grouping, under in groupings(parsed):
            known = [series.get(s.metric) for s in under if s.metric not in PROMETHEUS_SERIES]
            if any(labels is None for labels in known):
                continue
            available = set().union(*(labels or set() for labels in known)) | TARGET_LABELS
            if not grouping <= available:
                wrong_labels.append(f"{where}: groups by {grouping - available}")
    assert missing == [], "\n".join(missing)
    assert wrong_labels == [], "\n".join(wrong_labels)
    # Declared but not counted in a healthy run (failures, errors): their names are checked above.
    print(f"labels not checked (no sample in a healthy run): {sorted(unchecked)}")
    assert len(unchecked) < len(
        {s.metric for _, e in expressions() for s in selectors(pq.parse(e))}
    )

    # The exposition itself passes Prometheus' own linter.
    result = run_tool("promtool", "check", "metrics", input_text=text)
    assert result.returncode == 0, result.stdout + result.stderr
