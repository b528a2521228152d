"""The cursors of ``GET /jobs``: where a page ended, for one filter, in an opaque token.

A listing is ordered by (submitted_at, request_id), which never changes for a record, so a page
after a cursor is one index range scan however deep it is, and records added meanwhile neither
shift nor repeat what follows.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from datetime import UTC, datetime

from poller.errors import InvalidRequest
from poller.schemas import REQUEST_ID_PATTERN, JobFilter

MAX_CURSOR_CHARS = 512


def _fingerprint(listing: JobFilter) -> str:
    """A cursor is good for the filter it was made with only."""
    parts = [
        listing.state.value if listing.state is not None else "",
        listing.since.isoformat() if listing.since is not None else "",
        listing.until.isoformat() if listing.until is not None else "",
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def encode(after: tuple[datetime, str], listing: JobFilter) -> str:
    """The cursor of the page that follows the record ``after`` (its submitted_at, request_id)."""
    payload = {"t": after[0].isoformat(), "r": after[1], "f": _fingerprint(listing)}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, listing: JobFilter) -> tuple[datetime, str]:
    """Where the page of ``cursor`` starts; raises InvalidRequest for a cursor this service did
    not make, or made for another filter."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        at, request_id, made_for = payload["t"], payload["r"], payload["f"]
        if not (isinstance(at, str) and isinstance(request_id, str) and isinstance(made_for, str)):
            raise ValueError("odd fields")
        after = datetime.fromisoformat(at)
        if after.tzinfo is None:
            raise ValueError("no time zone")
        after = after.astimezone(UTC)  # OverflowError for a time no UTC time can be
        if re.fullmatch(REQUEST_ID_PATTERN, request_id) is None:
            raise ValueError("no request_id")
    except (
        ValueError,
        TypeError,
        KeyError,
        OverflowError,
        binascii.Error,
        UnicodeDecodeError,
    ) as exc:
        raise InvalidRequest(
            "cursor is not one this service gave (pass next_cursor as is)"
        ) from exc
    if made_for != _fingerprint(listing):
        raise InvalidRequest(
            "cursor was made for another state, since or until: keep the filter while paging"
        )
    return after, request_id
