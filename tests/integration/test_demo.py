"""The README's first command works: the demo brings up the stack and shows a completion event."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_prints_the_completion_event(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "poller.devstack", "demo", "--once", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    value = run.stdout.split("completion event value:\n", 1)[1].split("\nstopping", 1)[0]
    event = json.loads(value)
    assert event["state"] == "FINISHED"
    assert event["labels"] == {"source": "demo"}
    assert "POST /submit ->" in run.stdout
