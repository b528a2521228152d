"""Linking a driver to its application: by its log's word, or by the one matching name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from poller.apps import AppLinker, app_page, logged_app_id, matching_app
from poller.master_view import AppInfo, ClusterView, SharedView
from poller.schemas import DriverState, JobRecord, Phase, SparkApp

START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
MS = int(START.timestamp() * 1000)


def view(*apps: AppInfo) -> ClusterView:
    return ClusterView(0.0, {}, apps=apps, ui_base="http://master:8080")


def test_the_one_app_of_the_name_started_during_the_run_is_the_drivers() -> None:
    apps = view(
        AppInfo("app-1", "nightly", MS + 5_000),
        AppInfo("app-0", "nightly", MS - 3_600_000),  # an earlier run of the same name
        AppInfo("app-2", "other", MS + 6_000),
    )
    found = matching_app(apps, "nightly", START, START + timedelta(minutes=5))
    assert found == SparkApp(id="app-1", ui_url="http://master:8080/app/?appId=app-1")


def test_two_candidates_or_none_link_nothing() -> None:
    two = view(AppInfo("app-1", "nightly", MS + 5_000), AppInfo("app-2", "nightly", MS + 9_000))
    assert matching_app(two, "nightly", START, START + timedelta(minutes=5)) is None
    assert matching_app(view(), "nightly", START, START + timedelta(minutes=5)) is None


def test_the_log_names_the_app_its_context_registered() -> None:
    log = (
        "26/12/06 12:00:03 INFO StandaloneSchedulerBackend: Connected to Spark cluster with "
        "app ID app-20261206120003-0007\n"
    )
    assert logged_app_id(log) == "app-20261206120003-0007"
    assert logged_app_id("no such line") is None
    assert logged_app_id(None) is None
    assert app_page(None, "app-1") is None


class _View:
    def __init__(self, view: ClusterView) -> None:
        self.view = view

    def get(self, timeout_s: float) -> ClusterView:  # noqa: ARG002
        return self.view


def _record(request_id: str, app_name: str) -> JobRecord:
    return JobRecord(
        request_id=request_id,
        cluster="default",
        submission_id="driver-20261206120000-0001",
        state=DriverState.FAILED,
        phase=Phase.POLLING,
        submitted_at=START,
        spark_app_name=app_name,
    )


def test_only_the_name_the_service_gave_links_by_name() -> None:
    """A name the job chose may be another request's too: its driver failed before it made an
    application, and the other's is the one of that name that started during its run."""
    linker = AppLinker(cast(SharedView, _View(view(AppInfo("app-9", "backfill", MS + 5_000)))))
    until = START + timedelta(minutes=5)
    assert linker.link(_record("r-1", "backfill"), until, None, 1.0) is None
    assert linker.link(_record("r-1", "backfill"), until, "app-1", 1.0) == SparkApp(
        id="app-1", ui_url="http://master:8080/app/?appId=app-1"
    )
    given = AppLinker(cast(SharedView, _View(view(AppInfo("app-9", "r-2", MS + 5_000)))))
    assert given.link(_record("r-2", "r-2"), until, None, 1.0) == SparkApp(
        id="app-9", ui_url="http://master:8080/app/?appId=app-9"
    )
