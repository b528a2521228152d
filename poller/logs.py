"""Logging: one JSON object per line (or the human text format), with the request each line is
about, and no known secret in any line, whichever library wrote it.

The request a line is about comes from a log context (a context variable) that the poll run, the
use cases and the outbox bind, from ``extra=`` on the call, or, for APScheduler's lines, from the
job the line names (poll jobs carry their request's id).
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import types
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, ParamSpec, TextIO, TypeVar

from pythonjsonlogger.json import JsonFormatter

from poller.masking import Masker

CONTEXT_FIELDS = ("request_id", "submission_id", "cluster")
# What uvicorn's access log line says, as fields of their own.
ACCESS_FIELDS = ("client", "method", "path", "status")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# APScheduler's lines that name a job by its id alone (the others pass the Job itself).
_APSCHEDULER_ID_FIRST = ("Removed job %s", 'Unable to restore job "%s" -- removing it')

P = ParamSpec("P")
R = TypeVar("R")

_NO_SCOPE: Mapping[str, str] = types.MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("poller_log_context", default=_NO_SCOPE)


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Every line logged in this block (this thread or task) carries ``fields``."""
    token = _context.set({**_context.get(), **_given(fields)})
    try:
        yield
    finally:
        _context.reset(token)


def log_scope(fn: Callable[P, R]) -> Callable[P, R]:
    """Runs ``fn`` in a log context of its own, which :func:`add_log_context` fills as the call
    learns what it is about; the context ends with the call."""

    @functools.wraps(fn)
    def scoped(*args: P.args, **kwargs: P.kwargs) -> R:
        with log_context():
            return fn(*args, **kwargs)

    return scoped


def add_log_context(**fields: str | None) -> None:
    """Add ``fields`` to the innermost log context until it ends; nothing outside of one, so a
    thread's later lines never inherit a finished request."""
    current = _context.get()
    if current is not _NO_SCOPE:
        _context.set({**current, **_given(fields)})


def current_log_context() -> Mapping[str, str]:
    return dict(_context.get())


def _given(fields: Mapping[str, str | None]) -> dict[str, str]:
    return {name: value for name, value in fields.items() if value is not None}


class ContextFilter(logging.Filter):
    """Puts the log context's fields on each record (``extra=`` wins), the job id on
    APScheduler's, and the parts of uvicorn's access lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        if record.name.startswith("apscheduler") and getattr(record, "request_id", None) is None:
            job_id = _apscheduler_job_id(record)
            if job_id is not None:
                record.request_id = job_id
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _version, status = args
            record.client, record.method, record.path = str(client), str(method), str(path)
            record.status = status
        return True


def _apscheduler_job_id(record: logging.LogRecord) -> str | None:
    args = record.args if isinstance(record.args, tuple) else ()
    for arg in args:
        if type(arg).__module__ == "apscheduler.job":
            job_id = getattr(arg, "id", None)
            return job_id if isinstance(job_id, str) else None
    if record.msg in _APSCHEDULER_ID_FIRST and args and isinstance(args[0], str):
        return args[0]
    return None


def utc_time(created: float) -> str:
    """ISO 8601 in UTC with microseconds, like the times in records and events."""
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonLinesFormatter(JsonFormatter):
    """time, level, logger, message, the request fields that apply, exc_info as one field;
    every text masked before it is serialised (so an escaped secret cannot slip through)."""

    def __init__(self, masker: Masker) -> None:
        # ASCII only: a line shown on a terminal (kubectl logs) cannot carry a control character
        # that a terminal acts on (C1 controls, bidirectional overrides) from anyone's text.
        super().__init__(json_ensure_ascii=True)
        self.masker = masker

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        log_data["time"] = utc_time(record.created)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = self.masker(record.message)
        for name in (*CONTEXT_FIELDS, *ACCESS_FIELDS):
            value = record.__dict__.get(name)
            if value is not None:
                log_data[name] = self.masker(value) if isinstance(value, str) else value
        for name in ("exc_info", "stack_info"):
            text = message_dict.get(name)
            if text:
                log_data[name] = self.masker(str(text))


# Format characters that reorder or hide text on a terminal (bidirectional overrides, zero-width).
_HIDING = frozenset(
    "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff"
)


def printable(text: str) -> str:
    """``text`` with control and hiding characters shown as escapes: anyone's text (a request
    path, a label, a driver's message) must not forge a line, move the cursor, or retitle or
    clear a terminal."""
    if text.isprintable():
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if ch in _HIDING or (unicodedata.category(ch) == "Cc" and ch != " ")
        else ch
        for ch in text
    )


class TextFormatter(logging.Formatter):
    """The human format, the request fields appended; the whole text masked. The line itself
    is one line whatever its message holds; only a traceback adds lines."""

    def __init__(self, masker: Masker) -> None:
        super().__init__(TEXT_FORMAT)
        self.masker = masker

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [
            f"{name}={record.__dict__[name]}"
            for name in CONTEXT_FIELDS
            if record.__dict__.get(name) is not None
        ]
        if fields:
            head, newline, rest = text.partition("\n")
            text = f"{head} [{' '.join(fields)}]{newline}{rest}"
        return self.masker(text)


def log_handler(
    log_format: Literal["json", "text"], secrets: Iterable[str], stream: TextIO
) -> logging.Handler:
    """A handler writing ``log_format`` lines to ``stream``, with the request fields, masked."""
    masker = Masker(secrets)
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    formatter = JsonLinesFormatter(masker) if log_format == "json" else TextFormatter(masker)
    handler.setFormatter(formatter)
    return handler


def configure_logging(
    level: str,
    log_format: Literal["json", "text"],
    secrets: Iterable[str],
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every logger's lines, foreign libraries' included, through one masked handler.

    Also routes Python warnings and uncaught exceptions (main thread and others) through it, so
    no line reaches the output unformatted or unmasked. Returns the handler."""
    handler = log_handler(log_format, secrets, stream or sys.stdout)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler logs every run at INFO; the poll job logs what matters. DEBUG shows them all.
    logging.getLogger("apscheduler").setLevel(
        logging.DEBUG if level == "DEBUG" else max(logging.WARNING, logging.getLevelName(level))
    )
    logging.captureWarnings(True)
    # A record that fails to format would be printed to stderr with its arguments (which may
    # hold secrets) and a traceback: drop it instead.
    logging.raiseExceptions = False
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    return handler


def _log_uncaught(
    kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None
) -> None:
    logging.getLogger("poller").critical("uncaught %s", kind.__name__, exc_info=(kind, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("poller").critical(
        "uncaught %s in thread %s",
        args.exc_type.__name__,
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
