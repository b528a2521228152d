"""The jobs of the APScheduler 3 baselines, importable by name from the jobs they store."""

from __future__ import annotations

import threading

import requests

STANDIN = ""  # the Spark stand-in's URL, set by the process that runs the jobs
_local = threading.local()


def status_job(sid: str) -> None:
    """One status GET, as a stock poller would make it."""
    if not hasattr(_local, "s"):
        _local.s = requests.Session()
    _local.s.get(f"{STANDIN}/v1/submissions/status/{sid}", timeout=10).json()


def noop_job(_sid: str) -> None:
    """Nothing: what is left is APScheduler's own bookkeeping."""
