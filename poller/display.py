"""How the command line shows records and check results: plain columns a terminal and a
``grep``/``awk`` read alike (never truncated, never wrapped mid-value)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from poller.logs import printable

JOB_COLUMNS = (
    ("REQUEST_ID", "request_id"),
    ("CLUSTER", "cluster"),
    ("SUBMISSION_ID", "submission_id"),
    ("STATE", "state"),
    ("PHASE", "phase"),
    ("POLLS", "polls"),
    ("SUBMITTED_AT", "submitted_at"),
    ("COMPLETED_AT", "completed_at"),
)
RECORD_FIELDS = (
    "request_id",
    "cluster",
    "submission_id",
    "state",
    "phase",
    "spark_state",
    "message",
    "labels",
    "polls",
    "submitted_at",
    "last_polled_at",
    "next_poll_at",
    "completed_at",
    "event_id",
)
EMPTY = "-"


def columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart; the last one is not padded."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def cell(value: Any) -> str:
    """One value on one line: absent ones as ``-``, times to the second, labels as k=v."""
    if value is None or value == "" or value == {}:
        return EMPTY
    if isinstance(value, Mapping):
        return ",".join(f"{one_line(k)}={one_line(v)}" for k, v in value.items())
    return short_time(one_line(value))


def one_line(value: Any) -> str:
    """Any text as one printable line."""
    return printable(" ".join(str(value).split()))


def short_time(text: str) -> str:
    """``2026-11-25T12:10:10.744278Z`` -> ``2026-11-25T12:10:10Z``; other text unchanged."""
    if len(text) > 20 and text[10:11] == "T" and text.endswith("Z") and text[19:20] == ".":
        return text[:19] + "Z"
    return text


def jobs_table(records: Sequence[Mapping[str, Any]]) -> str:
    rows = [[cell(record.get(key)) for _, key in JOB_COLUMNS] for record in records]
    return columns([header for header, _ in JOB_COLUMNS], rows)


def job_details(record: Mapping[str, Any]) -> str:
    """One field a line, the record's own order of importance; times in full."""
    keys = [*RECORD_FIELDS, *(k for k in record if k not in RECORD_FIELDS)]
    width = max(len(k) for k in keys)
    lines = []
    for key in keys:
        if key not in record:
            continue
        value = record[key]
        text = EMPTY if value is None or value in ("", {}) else cell(value)
        if isinstance(value, str) and text != EMPTY:
            text = one_line(value)  # in full: times keep their fractions
        lines.append(f"{key.ljust(width)}  {text}")
    return "\n".join(lines)


def listing_footer(shown: int, total: int | None, more: bool) -> str:
    """How many of the matches the table shows, and how to see the rest."""
    of = f" of {total}" if total is not None else ""
    if not more:
        return f"{shown}{of} request(s)"
    return f"{shown}{of} request(s) shown; --all lists every one"
