"""The README's first command works: the demo brings up the stack and shows a completion event,
starts fresh, and refuses clearly (starting nothing) when a port it needs is taken."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from poller.devstack import (
    DEMO_MARKER,
    DEMO_PORTS,
    DemoSetupError,
    free_ports,
    port_taken,
    prepare_workdir,
)

REPO = Path(__file__).resolve().parents[2]


def demo_env(**ports: int) -> dict[str, str]:
    """The environment of a demo on free ports (``ports`` overrides some), so it collides with
    nothing on the machine; POLLER_* of the caller left out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "DEMO_"))}
    for port, free in zip(DEMO_PORTS, free_ports(len(DEMO_PORTS)), strict=True):
        env[port.variable] = str(ports.get(port.variable, free))
    return env


def run_demo(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "poller.devstack", "demo", "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
        cwd=REPO,
    )


def test_demo_prints_the_completion_event_and_starts_fresh(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    workdir.mkdir()
    # What an earlier run left: its marker and a database the new run must not reuse (it is not
    # even SQLite: a run that kept it could not start).
    (workdir / DEMO_MARKER).write_text("")
    (workdir / "poller.db").write_text("an earlier run's database")
    run = run_demo(workdir, demo_env(), "--once")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert ": fresh" in run.stdout.split("\n", 1)[0]
    value = run.stdout.split("completion event value:\n", 1)[1].split("\nstopping", 1)[0]
    event = json.loads(value)
    assert event["state"] == "FINISHED"
    assert event["labels"] == {"source": "demo"}
    assert event["request_id"].startswith("demo-")
    assert "POST /submit ->" in run.stdout
    with sqlite3.connect(workdir / "poller.db") as db:
        request_ids = [row[0] for row in db.execute("SELECT request_id FROM poller_requests")]
    assert request_ids == [event["request_id"]]


def test_a_taken_port_is_named_with_the_way_out_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        env = demo_env(DEMO_SPARK_MASTER_PORT=taken)
        run = run_demo(tmp_path / "demo", env)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"port {taken} (the Spark master) is taken" in run.stderr
    assert "DEMO_SPARK_MASTER_PORT=" in run.stderr
    assert "starting Spark" not in run.stdout
    others = [int(env[p.variable]) for p in DEMO_PORTS if p.variable != "DEMO_SPARK_MASTER_PORT"]
    assert not any(port_taken(port) for port in others)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"DEMO_PORT": "80x"}, "DEMO_PORT='80x' is not a TCP port"),
        ({"DEMO_PORT": "18000", "DEMO_KAFKA_PORT": "18000"}, "are both 18000"),
    ],
)
def test_bad_port_settings_are_refused(
    tmp_path: Path, variables: dict[str, str], message: str
) -> None:
    run = run_demo(tmp_path / "demo", {**demo_env(), **variables})
    assert run.returncode == 2
    assert message in run.stderr


def test_a_workdir_holding_other_files_is_never_emptied(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    run = run_demo(tmp_path, demo_env())
    assert run.returncode == 2
    assert "holds files the demo did not make" in run.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_keep_reuses_the_state_and_a_plain_start_empties_it(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    assert prepare_workdir(workdir, keep=False) is False
    (workdir / "service.log").write_text("earlier run")
    assert prepare_workdir(workdir, keep=True) is True
    assert (workdir / "service.log").read_text() == "earlier run"
    assert prepare_workdir(workdir, keep=False) is False
    assert sorted(path.name for path in workdir.iterdir()) == [DEMO_MARKER]
    # An older demo's workdir (no marker, only what a demo makes) is recognised too.
    (workdir / DEMO_MARKER).unlink()
    (workdir / "poller.db").write_text("")
    assert prepare_workdir(workdir, keep=False) is False
    (workdir / "file.txt").write_text("")
    (workdir / DEMO_MARKER).unlink()
    with pytest.raises(DemoSetupError):
        prepare_workdir(workdir, keep=True)
