"""The cluster view: one /json/ per refresh answers for every driver, never for the wrong one."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from poller.devstack import SparkStandalone, wait_for
from tests.conftest import JobBody, ServiceFactory
from tests.support import EventReader, NotAliveProxy, ViewProxy


@pytest.fixture
def rest(spark: SparkStandalone) -> Iterator[NotAliveProxy]:
    """Spark's REST API behind a proxy that counts the calls by action."""
    proxy = NotAliveProxy(spark.rest_url)
    yield proxy
    proxy.close()


@pytest.fixture
def view(spark: SparkStandalone) -> Iterator[ViewProxy]:
    proxy = ViewProxy(spark.ui_url)
    yield proxy
    proxy.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples that carry ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_polls_read_the_cluster_view_instead_of_asking_each_driver(
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
    rest: NotAliveProxy,
    view: ViewProxy,
) -> None:
    svc = start_service(
        POLLER_SPARK_REST_URL=rest.url,
        POLLER_SPARK_UI_URL=view.url,
        POLLER_STATUS_SOURCE="view",
        POLLER_STATUS_VIEW_MAX_AGE_S="1",
    )
    ids = [f"view-{n}" for n in range(3)]
    for request_id in ids:
        answer = svc.post("/submit", json={"request_id": request_id, "job": job_body(seconds=12)})
        assert answer.status_code == 202, answer.text
    started = time.monotonic()
    by_key = events.wait_for_keys(set(ids))
    elapsed = time.monotonic() - started
    assert {key: [e.value["state"] for e in found] for key, found in by_key.items()} == {
        key: ["FINISHED"] for key in ids
    }
    polls = sum(svc.job(request_id)["polls"] for request_id in ids)
    # Three drivers polled every second for about 12 s: dozens of answers, nearly all from the
    # view, which is fetched about once a second whatever the number of drivers.
    assert polls >= 20, polls
    assert rest.seen.get("status", 0) <= 3, rest.seen
    assert view.views <= elapsed / 1.0 + 5, (view.views, elapsed)
    text = svc.get("/metrics").text
    assert metric(text, "spark_poller_status_answers_total", source="view") >= 20
    assert metric(text, "spark_poller_spark_request_duration_seconds_count", call="view") >= 1


@pytest.mark.parametrize("mode", ["standby", "broken", "garbage"])
def test_a_view_that_cannot_speak_for_the_cluster_is_never_believed(
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
    rest: NotAliveProxy,
    view: ViewProxy,
    mode: str,
) -> None:
    """A standby master's view that says every driver FINISHED, an error page, garbage: the
    polls ask each driver's REST status instead, and the event tells what really happened."""
    view.mode = mode
    svc = start_service(
        POLLER_SPARK_REST_URL=rest.url,
        POLLER_SPARK_UI_URL=view.url,
        POLLER_STATUS_SOURCE="view",
        POLLER_STATUS_VIEW_MAX_AGE_S="1",
    )
    answer = svc.post("/submit", json={"request_id": f"odd-{mode}", "job": job_body(exit_code=4)})
    assert answer.status_code == 202, answer.text
    wait_for(lambda: rest.seen.get("status", 0) >= 3, 60, "polls to ask REST instead")
    (event,) = events.wait_for_keys({f"odd-{mode}"})[f"odd-{mode}"]
    assert event.value["state"] == "FAILED"  # the driver exits 4: not the view's FINISHED
    assert view.views >= 1
    assert f"odd-{mode}" in svc.get("/jobs/odd-" + mode).text
    logs = svc.logs()
    assert "polls ask each driver's REST status" in logs


def test_the_view_is_used_again_once_it_answers(
    start_service: ServiceFactory,
    job_body: JobBody,
    events: EventReader,
    rest: NotAliveProxy,
    view: ViewProxy,
) -> None:
    view.mode = "broken"
    svc = start_service(
        POLLER_SPARK_REST_URL=rest.url,
        POLLER_SPARK_UI_URL=view.url,
        POLLER_STATUS_SOURCE="view",
        POLLER_STATUS_VIEW_MAX_AGE_S="1",
    )
    answer = svc.post("/submit", json={"request_id": "heals", "job": job_body(seconds=20)})
    assert answer.status_code == 202, answer.text
    wait_for(lambda: rest.seen.get("status", 0) >= 2, 60, "polls to ask REST while it is broken")
    view.mode = None
    wait_for(lambda: "the cluster view answers again" in svc.logs(), 30, "the view to be used")
    asked = rest.seen.get("status", 0)
    polls = svc.job("heals")["polls"]
    wait_for(lambda: svc.job("heals")["polls"] >= polls + 3, 30, "three more polls")
    assert rest.seen.get("status", 0) <= asked + 1, (asked, rest.seen)
    (event,) = events.wait_for_keys({"heals"})["heals"]
    assert event.value["state"] == "FINISHED"
