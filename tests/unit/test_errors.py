"""Every error of ours maps to a deliberate HTTP status."""

from __future__ import annotations

from poller import errors
from poller.api import status_for


def _all_subclasses(cls: type[errors.PollerError]) -> list[type[errors.PollerError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def test_every_error_has_a_status() -> None:
    for kind in _all_subclasses(errors.PollerError):
        if kind in (errors.SparkError,):
            continue  # abstract grouping only
        if kind is errors.SparkRejected:
            assert status_for(kind("no", 400)) == 422
            assert status_for(kind("no", 403)) == 502
            continue
        if kind is errors.DriverTaken:
            assert status_for(kind("taken", "other-request")) == 409
            continue
        assert 400 <= status_for(kind("x")) < 500 or status_for(kind("x")) in (502, 503, 504), kind
