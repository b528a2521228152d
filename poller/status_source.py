"""Where a poll learns its driver's state: the cluster view when it is fresh, REST otherwise.

With the view, a cluster's master answers one ``/json/`` request per refresh for all its drivers
instead of one status call per driver per poll. A poll uses the view only if it was taken after
the driver's previous answer (states never go back) and is at most ``max_age_s`` old (the bound
it adds to noticing an ending). It asks the REST status call instead when the driver is not in
the view (just submitted, or evicted from the master's memory), when the view cannot be had, when
the view says ERROR (only the REST answer carries Spark's message), and for drivers being
cancelled (a kill is confirmed at once, not at the next refresh). A refresh that shows drivers
ended (or gone) since the last view wakes their polls at once: an ending is seen within
``max_age_s`` of happening, not a poll interval later.

A view nearing ``max_age_s`` is refreshed on a thread of its own while polls (and adoptions) go on
using it: reading a large cluster's view takes tens of milliseconds that nobody should wait for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from poller.errors import SparkUnavailable
from poller.master_view import ClusterView, MasterView, view_state
from poller.metrics import STATUS_ANSWERS
from poller.schemas import DriverState, DriverStatus
from poller.spark import SparkClient

logger = logging.getLogger(__name__)

# Past this share of max_age_s a view is still used, and a refresh starts in the background.
REFRESH_AHEAD = 0.75


class StatusSource:
    """One cluster's driver states for the poll job."""

    def __init__(
        self,
        client: SparkClient,
        view: MasterView | None,
        max_age_s: float,
        wake: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.client = client
        self.view = view
        self.max_age_s = max_age_s
        self.wake = wake
        self.name = client.name
        # Drivers last seen running in a view -> their request: a newer view that shows them
        # ended wakes their polls at once instead of at their next turn.
        self._running: dict[str, str] = {}
        self._lock = threading.Lock()  # guards _current, _answered, _retry_at, _problem
        self._refresh = threading.Lock()  # one refresh at a time; the others wait for it
        self._current: ClusterView | None = None
        self._ahead_of: ClusterView | None = None  # the view a refresh ahead was started for
        # When each driver's last answer was had (monotonic): a view must be newer to be used.
        self._answered: dict[str, float] = {}
        self._retry_at = 0.0
        self._problem: str | None = None

    def latest_view(self) -> ClusterView | None:
        """The last view taken, whatever its age (None with none, or without views)."""
        return self._current

    def status(
        self, submission_id: str, direct: bool = False, request_id: str | None = None
    ) -> DriverStatus:
        """The driver's state now. Raises what :meth:`SparkClient.status` raises.

        ``request_id`` names the request whose poll asks: its poll is woken when a later view
        shows the driver ended. None when no poll asks (an adoption)."""
        if self.view is not None and not direct:
            view = self._view_for(submission_id)
            seen = None if view is None else view.status(submission_id)
            if view is not None and seen is not None and seen.state != DriverState.ERROR:
                state = seen.state
                assert state is not None
                with self._lock:
                    self._answered[submission_id] = view.taken_at
                    if request_id is not None:  # a poll's (an adoption leaves it to its poll)
                        if state.terminal:
                            self._running.pop(submission_id, None)
                        else:
                            self._running[submission_id] = request_id
                STATUS_ANSWERS.labels(self.name, "view").inc()
                return seen
        status = self.client.status(submission_id)
        answered = time.monotonic()
        if self.view is not None:
            with self._lock:
                self._answered[submission_id] = answered
                if request_id is not None:
                    self._running.pop(submission_id, None)
        STATUS_ANSWERS.labels(self.name, "rest").inc()
        return status

    def _usable(self, submission_id: str, now: float) -> ClusterView | None:
        view = self._current
        if view is None or now - view.taken_at > self.max_age_s:
            return None
        if view.taken_at <= self._answered.get(submission_id, float("-inf")):
            return None
        return view

    def _view_for(self, submission_id: str) -> ClusterView | None:
        with self._lock:
            now = time.monotonic()
            view = self._usable(submission_id, now)
            ageing = view is not None and now - view.taken_at > REFRESH_AHEAD * self.max_age_s
            if view is not None or now < self._retry_at:
                if ageing and self._ahead_of is not view and self._refresh.acquire(blocking=False):
                    self._ahead_of = view  # one refresh ahead per view, even if it fails
                    try:
                        threading.Thread(
                            target=self._refresh_held, name=f"view-{self.name}", daemon=True
                        ).start()
                    except BaseException:  # no thread to release it: nobody may wait on it
                        self._refresh.release()
                        raise
                return view
        with self._refresh:
            with self._lock:  # another thread may have refreshed it meanwhile
                view = self._usable(submission_id, time.monotonic())
                if view is not None or time.monotonic() < self._retry_at:
                    return view
            ended = self._fetch()
        self._wake(ended)  # not under _refresh: other polls need not wait
        with self._lock:
            return self._usable(submission_id, time.monotonic())

    def _refresh_held(self) -> None:
        """A refresh ahead of need, on its own thread; the caller took ``_refresh`` for it.

        If it fails, the current view serves until it is too old: the refresh then made by a
        poll decides whether polls fall back to REST."""
        try:
            ended = self._fetch(ahead=True)
        except Exception:  # the next poll refreshes in its own time
            logger.exception("Spark cluster %s: refreshing the cluster view failed", self.name)
            return
        finally:
            self._refresh.release()
        self._wake(ended)

    def _fetch(self, ahead: bool = False) -> list[str]:
        """Take a new view (caller holds ``_refresh``); returns the requests to wake."""
        assert self.view is not None
        try:
            fresh = self.view.fetch()
        except SparkUnavailable as exc:
            if ahead:
                logger.debug("Spark cluster %s: no view ahead of need: %s", self.name, exc.message)
            else:
                self._failed(exc.message)
            return []
        return self._took(fresh)

    def _wake(self, ended: list[str]) -> None:
        if ended and self.wake is not None:
            try:
                self.wake(ended)
            except Exception as exc:  # they are polled at their next turn anyway
                logger.debug("could not wake %d poll(s): %s", len(ended), exc)

    def _took(self, view: ClusterView) -> list[str]:
        """Use ``view`` from now on; returns the requests whose drivers it shows ended."""
        ended: list[str] = []
        with self._lock:
            self._current = view
            self._retry_at = 0.0
            # An answer older than any usable view no longer decides anything.
            oldest = view.taken_at - self.max_age_s
            self._answered = {k: t for k, t in self._answered.items() if t > oldest}
            for submission_id, request_id in list(self._running.items()):
                raw = view.states.get(submission_id)
                if raw is None or view_state(raw).terminal:  # ended, or gone: poll it now
                    del self._running[submission_id]
                    ended.append(request_id)
            problem, self._problem = self._problem, None
        if problem is not None:
            logger.warning(
                "Spark cluster %s: the cluster view answers again; polls use it", self.name
            )
        return ended

    def forget(self, submission_id: str) -> None:
        """The driver's request is settled: nothing more to remember of it."""
        with self._lock:
            self._answered.pop(submission_id, None)
            self._running.pop(submission_id, None)

    def _failed(self, message: str) -> None:
        with self._lock:
            self._current = None
            self._retry_at = time.monotonic() + self.max_age_s
            # An answer older than any view that could be usable decides nothing.
            oldest = time.monotonic() - self.max_age_s
            self._answered = {k: t for k, t in self._answered.items() if t > oldest}
            repeated, self._problem = self._problem == message, message
        if not repeated:
            logger.warning(
                "Spark cluster %s: %s; polls ask each driver's REST status until it answers",
                self.name,
                message,
            )
