"""Reading the tag out of a driver's launch command: only a whole argument of its own counts."""

from __future__ import annotations

import pytest

from poller.finder import launch_tag

TAG = "0f9c1c57-8a5e-4c52-9d65-2b2b6f1d3a10"
JAVA = 'Launch Command: "/usr/bin/java" "-cp" "/spark/jars/*" "-Xmx256M"'


def test_the_tag_argument_is_read() -> None:
    line = f'{JAVA} "-Dspark.app.name=nightly" "-Dspark.poller.tag={TAG}" "x.Main"'
    assert launch_tag(line) == TAG


@pytest.mark.parametrize(
    "line",
    [
        # Inside another argument: not one of its own. (Spark writes each argument between
        # quotes, unescaped: the service refuses its tag inside a job's values and arguments.)
        f'{JAVA} "-Dspark.app.name=-Dspark.poller.tag={TAG}" "x.Main"',
        # Two of them: one was smuggled in (java options become arguments of their own).
        f'{JAVA} "-Dspark.poller.tag={TAG}" "-Dspark.poller.tag=1e0b5e2c-0000-4000-8000-1"',
        # Not a launch command at all.
        f'"-Dspark.poller.tag={TAG}"',
        f"{JAVA} -Dspark.poller.tag={TAG}",
        "",
    ],
)
def test_anything_else_is_no_tag(line: str) -> None:
    assert launch_tag(line) is None
