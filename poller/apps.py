"""Which Spark application a driver ran. The master's view lists drivers and applications but
nothing that links the two; the driver's log does ("Connected to Spark cluster with app ID"),
when it was read. Otherwise an application is the driver's when its name is the one the service
gave the driver (its request_id; a name the job chose may be another's too), it started while
the driver ran, and it is the only one that does: never a guess between two.
"""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import quote

from poller.errors import SparkUnavailable
from poller.master_view import CLOCK_SKEW_S, ClusterView, SharedView
from poller.schemas import JobRecord, SparkApp

_LOGGED = re.compile(r"Connected to Spark cluster with app ID (app-[\w-]{1,100})")


def logged_app_id(log: str | None) -> str | None:
    """The application id a driver's log names (its SparkContext registering), if any."""
    found = None if log is None else _LOGGED.findall(log)
    return found[-1] if found else None


def app_page(ui_base: str | None, app_id: str) -> str | None:
    """The application's page on the master's web UI (the driver's own UI dies with it)."""
    return None if ui_base is None else f"{ui_base}/app/?appId={quote(app_id)}"


def matching_app(view: ClusterView, name: str, since: datetime, until: datetime) -> SparkApp | None:
    """The one application named ``name`` that started between ``since`` and ``until``."""
    low = int((since.timestamp() - CLOCK_SKEW_S) * 1000)
    high = int((until.timestamp() + CLOCK_SKEW_S) * 1000)
    found = [app for app in view.apps if app.name == name and low <= app.start_ms <= high]
    if len(found) != 1:
        return None
    return SparkApp(id=found[0].id, ui_url=app_page(view.ui_base, found[0].id))


class AppLinker:
    """Links endings of one cluster's drivers to their applications."""

    def __init__(self, view: SharedView) -> None:
        self.view = view

    def link(
        self, record: JobRecord, until: datetime, logged_id: str | None, timeout_s: float
    ) -> SparkApp | None:
        """The application of ``record``'s driver, which ended by ``until``."""
        # Only the name the service gave (the request_id) is this request's alone: a name the
        # job chose may be another's, whose application would be the one of a driver that
        # failed before it made its own.
        name = record.spark_app_name if record.spark_app_name == record.request_id else None
        if name is None and logged_id is None:
            return None
        try:
            view: ClusterView | None = self.view.get(timeout_s)
        except SparkUnavailable:
            view = None
        if logged_id is not None:
            base = None if view is None else view.ui_base
            return SparkApp(id=logged_id, ui_url=app_page(base, logged_id))
        if view is None or name is None:
            return None
        return matching_app(view, name, record.submitted_at, until)
