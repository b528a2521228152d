"""Text from outside (Spark's answers, drivers' logs) made fit to store and publish."""

from __future__ import annotations

import re

# C0 controls but tab, newline and carriage return, and DEL: PostgreSQL refuses a NUL in text,
# and a terminal escape has no place in a log line or an event.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
REPLACEMENT = "\ufffd"


def printable(text: str, limit: int | None = None) -> str:
    """``text`` (its first ``limit`` characters) with each control character replaced."""
    text = text if limit is None else text[:limit]
    # Parsing a view runs this for every driver: most texts need no replacing, found in C.
    return text if text.isprintable() else _CONTROL.sub(REPLACEMENT, text)
