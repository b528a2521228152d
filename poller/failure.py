"""Why a driver failed, read from its own stdout and stderr: Spark's status only says FAILED.

What the logs hold (seen on Spark 4.3 standalone, kept in tests/unit/data/spark_logs):

- A Python driver (PythonRunner) writes its traceback to stdout, where the runner merges Python's
  stderr. Its JVM stderr ends in ``InvocationTargetException`` caused by ``SparkUserAppException:
  User application exited with 1``, which says only that Python failed.
- A task that failed on an executor comes back inside the driver's traceback: PySpark appends the
  executor's own traceback, whose exception is the one the user's code raised.
- A JVM driver's stderr ends in ``Exception in thread "main" X: msg`` and its ``Caused by:`` chain.
- Stack traces under log4j lines are mostly noise (an INFO line quoting a NullPointerException while
  a context stops); one under an ERROR line can be the cause when nothing better is found.

Pure text work, bounded: only the last SCAN_MAX_CHARS of each log are read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from poller.text import printable

REASON_MAX_CHARS = 1000
FRAME_MAX_CHARS = 512
SCAN_MAX_CHARS = 256 * 1024
DEFAULT_TAIL_BYTES = 4096
# How the worker starts the line of a driver's launch command in stderr, and the line it puts
# between the command and the driver's output.
LAUNCH_COMMAND = "Launch Command:"
LAUNCH_SEPARATOR = "=" * 40
# The password of credentials in a URL: scheme://user:password@host.
_URL_PASSWORD = re.compile(r"(?P<user>://[^\s:/@]{1,256}):[^\s@]{1,256}@")
# Spark's own mark for a redacted value, so a tail reads the same as Spark's launch command.
REDACTED = "*********(redacted)"
KILLED_REASON = "killed: a kill request, or its worker stopped it"
# Exceptions that only carry another one: the one inside says why.
WRAPPERS = frozenset(
    {
        "java.lang.reflect.InvocationTargetException",
        "java.lang.reflect.UndeclaredThrowableException",
        "org.apache.spark.SparkUserAppException",
    }
)

LogSource = Literal["stdout", "stderr"]
Mask = Callable[[str], str]
# Python's traceback is in stdout, the JVM's in stderr; each is looked for in both.
_PYTHON_FIRST: tuple[LogSource, ...] = ("stdout", "stderr")
_JVM_FIRST: tuple[LogSource, ...] = ("stderr", "stdout")

_TRACEBACK = "Traceback (most recent call last):"
# Names are bounded: a real one is short, and a long run of word characters must stay cheap.
_PY_EXCEPTION = re.compile(r"(?P<name>[A-Za-z_][\w.]{0,250})(?::[ \t]?(?P<message>.*))?")
_PY_FRAME = 'File "'
_JAVA_EXCEPTION = re.compile(
    r"(?P<name>[\w$.]{1,250}(?:Exception|Error))(?::[ \t]?(?P<message>.*))?"
)
_IN_THREAD = re.compile(r'Exception in thread "[^"]*" (?P<exception>.*)')
_CAUSED_BY = "Caused by: "
_LOG_RECORD = re.compile(
    r"\d{2,4}[/-]\d\d[/-]\d\d[ T]\d\d:\d\d:\d\d\S*\s+(?:\[[^\]]*\]\s+)?"
    r"(?P<level>TRACE|DEBUG|INFO|WARN|WARNING|ERROR|FATAL)\b"
)
_QUIET_LEVELS = frozenset({"TRACE", "DEBUG", "INFO", "WARN", "WARNING"})
# A launch command the worker wrote, through its closing line of ``=`` and the blank line after.
_LAUNCH_BLOCK = re.compile(
    rf"^{LAUNCH_COMMAND} .*?(?:^{LAUNCH_SEPARATOR}$\n*|\Z)", re.MULTILINE | re.DOTALL
)
_SEPARATOR_LINE = re.compile(rf"^{LAUNCH_SEPARATOR}$", re.MULTILINE)
_LAUNCH_LINE = re.compile(rf"^{LAUNCH_COMMAND} ", re.MULTILINE)
# The worker's /log endpoint puts this line before the bytes it returns.
_LOG_ENDPOINT_HEADER = re.compile(r"==== Bytes \d+-\d+ of \d+ of [^\n]* ====\n?")
# Spark's spark.redaction.regex (plus "credential"), applied to key=value pairs as Spark does:
# the value goes when the key or the value matches.
_SECRET_WORD = re.compile(r"(?i)secret|password|token|access[.]?key|credential")
# A key starts where a word does: a match tried at every letter of a long word is quadratic.
_KEY_VALUE = re.compile(r"(?<![\w.\-])(?P<key>[\w.\-]{1,200})=(?P<value>[^\s\"'&]+)")


@dataclass(frozen=True)
class FailureInfo:
    """What the logs say about a failure; every field None when they say nothing."""

    reason: str | None  # one human line, e.g. "ValueError: bad partition 7"
    exception_class: str | None  # "ValueError", "java.lang.ClassNotFoundException"
    frame: str | None  # where it was raised: a Python 'File ...' line or a JVM 'at ...' line
    log_tail: str | None  # the end of the log the reason came from (stderr without a reason)
    log_source: LogSource | None  # the log of the reason; without one, of the tail


@dataclass
class _Cause:
    name: str
    message: str | None
    frame: str | None = None
    source: LogSource | None = None


@dataclass
class _Chain:
    """One JVM stack trace: the thrown exception, then its ``Caused by:`` chain."""

    causes: list[_Cause]
    main_thread: bool  # printed as 'Exception in thread "..."': what ended a thread
    quiet: bool  # printed under a log4j record below ERROR


def extract(
    stdout: str | None,
    stderr: str | None,
    *,
    tail_bytes: int = DEFAULT_TAIL_BYTES,
    mask: Mask | None = None,
) -> FailureInfo:
    """Why the driver failed, from its two logs; ``mask`` hides known secrets (a Masker).

    Spark's key=value redaction is applied too. The tail is at most ``tail_bytes`` UTF-8 bytes
    and starts at a line start; 0 gives no tail."""
    logs: dict[LogSource, str] = {
        "stdout": _strip_header(stdout or ""),
        "stderr": _without_launch_command(_strip_header(stderr or "")),
    }
    cause = _find_cause({source: _window(text) for source, text in logs.items()})
    source: LogSource | None = cause.source if cause is not None else None
    if source is None and logs["stderr"]:
        source = "stderr"
    tail = _masked_tail(logs[source], tail_bytes, mask) if source is not None else None
    if cause is None:
        return FailureInfo(None, None, None, tail, source if tail is not None else None)
    reason = cause.name if cause.message is None else f"{cause.name}: {cause.message}"
    frame = None if cause.frame is None else _bound(_mask(cause.frame, mask), FRAME_MAX_CHARS)
    return FailureInfo(
        reason=_bound(_mask(reason, mask), REASON_MAX_CHARS),
        exception_class=cause.name,
        frame=frame,
        log_tail=tail,
        log_source=source,
    )


def killed_reason() -> str:
    """The reason of a KILLED driver: its logs name no exception (a kill stops the JVM
    mid-run), and Spark's status does not say who asked."""
    return KILLED_REASON


def redact(text: str) -> str:
    """Spark's redaction of key=value pairs (a value whose key or itself names a secret), and
    the password of a URL's credentials (``jdbc:postgresql://user:pw@host``)."""

    def hide(match: re.Match[str]) -> str:
        if _SECRET_WORD.search(match["key"]) or _SECRET_WORD.search(match["value"]):
            return f"{match['key']}={REDACTED}"
        return match[0]

    return _URL_PASSWORD.sub(rf"\g<user>:{REDACTED}@", _KEY_VALUE.sub(hide, text))


def from_line_start(text: str, offset: int, *, stderr: bool = False) -> str:
    """``text`` read from ``offset`` of its log, less the line it starts inside. Past the log's
    start that may be a launch command's, cut before the words that mark it; and in stderr,
    where an argument with line breaks spreads the command over lines, a separator line with
    no launch command before it ends a command that was cut: all up to it goes."""
    if offset <= 0:
        return text
    newline = text.find("\n")
    text = "" if newline == -1 else text[newline + 1 :]
    if stderr:
        separator = _SEPARATOR_LINE.search(text)
        launch = _LAUNCH_LINE.search(text)
        if separator is not None and (launch is None or separator.start() < launch.start()):
            return text[separator.end() :].lstrip("\n")
    return text


def _without_launch_command(stderr: str) -> str:
    """The worker writes the driver's launch command (every Spark property it was given, the
    job's own credentials among them) and a line of 40 ``=`` at every launch (again for each
    relaunch of a supervised driver): none of it says why the driver failed, and none of it
    may leave in an event. A command with no line after it runs to the end of what was read."""
    return _LAUNCH_BLOCK.sub("", stderr)


def _find_cause(windows: dict[LogSource, list[str]]) -> _Cause | None:
    """The most telling cause: a Python traceback, then the JVM's main thread, then others."""
    for source in _PYTHON_FIRST:
        python = _python_cause(windows[source])
        if python is not None:
            return replace(python, source=source)
    chains = {source: _java_chains(lines) for source, lines in windows.items()}
    main: _Cause | None = None
    for source in _JVM_FIRST:
        ended = [chain for chain in chains[source] if chain.main_thread]
        if ended:
            main = replace(_deepest(ended[-1]), source=source)
            break
    if main is not None and main.name not in WRAPPERS:
        return main
    for source in _PYTHON_FIRST:
        loose = [c for c in chains[source] if not c.main_thread and not c.quiet]
        if loose:
            other = _deepest(loose[-1])
            if other.name not in WRAPPERS:
                return replace(other, source=source)
    return main


def _python_cause(lines: Sequence[str]) -> _Cause | None:
    """What the last Python traceback raised, or a SyntaxError (printed without a header)."""
    for index in range(len(lines) - 1, -1, -1):
        if _TRACEBACK in lines[index]:
            cause = _traceback_block(lines, index + 1)
            if cause is not None:
                return cause
    return _syntax_error(lines)


def _traceback_block(lines: Sequence[str], start: int) -> _Cause | None:
    """The exception line after a traceback's indented frames (None if it was cut off)."""
    frame: str | None = None
    for index in range(start, len(lines)):
        line = lines[index]
        stripped = line.strip()
        if not stripped or line[0] in " \t":
            if stripped.startswith(_PY_FRAME):
                frame = stripped
            continue
        match = _PY_EXCEPTION.fullmatch(line.rstrip())
        if match is None:
            return None
        cause = _Cause(match["name"], _message(match["message"]), frame)
        if cause.name.endswith("Py4JJavaError"):
            return _py4j_cause(cause, lines[index + 1 :])
        return cause
    return None


def _py4j_cause(python: _Cause, rest: Sequence[str]) -> _Cause:
    """Py4J's message only names the call; the Java exception under it says why."""
    for index, line in enumerate(rest[:20]):
        if line.startswith(": "):
            chains = _java_chains([line[2:], *rest[index + 1 :]])
            if chains:
                java = _deepest(chains[0])
                return replace(java, frame=python.frame)
    return python


def _syntax_error(lines: Sequence[str]) -> _Cause | None:
    """Python prints a script's SyntaxError as a 'File' line and the error, with no header."""
    for index in range(len(lines) - 1, -1, -1):
        match = _PY_EXCEPTION.fullmatch(lines[index].rstrip())
        if match is None or not match["name"].endswith("Error") or match["message"] is None:
            continue
        for back in range(index - 1, max(index - 5, -1), -1):
            above = lines[back]
            if not above[:1].isspace():
                break
            if above.strip().startswith(_PY_FRAME):
                return _Cause(match["name"], _message(match["message"]), above.strip())
        return None
    return None


def _java_chains(lines: Sequence[str]) -> list[_Chain]:
    """Every JVM stack trace in the lines, with what was printed just above it."""
    chains: list[_Chain] = []
    current: _Chain | None = None
    level: str | None = None
    for line in lines:
        if current is not None and line.startswith(_CAUSED_BY):
            found = _exception(line[len(_CAUSED_BY) :])
            if found is not None:
                current.causes.append(found)
                continue
        if line[:1].isspace():
            stripped = line.strip()
            if current is not None and stripped.startswith("at "):
                last = current.causes[-1]
                if last.frame is None:
                    last.frame = stripped
            continue
        thread = _IN_THREAD.match(line)
        found = _exception(thread["exception"] if thread else line)
        if found is not None:
            current = _Chain([found], thread is not None, level in _QUIET_LEVELS)
            chains.append(current)
            continue
        record = _LOG_RECORD.match(line)
        if record is not None:
            level, current = record["level"], None
        elif current is not None and current.causes[-1].frame is not None:
            current = None  # text after the frames: the trace is over; before them, its message
    return chains


def _exception(text: str) -> _Cause | None:
    match = _JAVA_EXCEPTION.fullmatch(text.rstrip())
    if match is None:
        return None
    return _Cause(match["name"], _message(match["message"]))


def _deepest(chain: _Chain) -> _Cause:
    """The innermost cause that is not a mere wrapper (the wrapper when that is all there is)."""
    telling = [cause for cause in chain.causes if cause.name not in WRAPPERS]
    return (telling or chain.causes)[-1]


def _message(text: str | None) -> str | None:
    stripped = (text or "").strip()
    return stripped or None


def _strip_header(text: str) -> str:
    match = _LOG_ENDPOINT_HEADER.match(text)
    return text[match.end() :] if match else text


def _window(text: str) -> list[str]:
    """The lines of the log's last SCAN_MAX_CHARS: the end holds the failure."""
    if len(text) > SCAN_MAX_CHARS:
        text = text[-SCAN_MAX_CHARS:]
        newline = text.find("\n")
        if newline != -1:
            text = text[newline + 1 :]  # drop the cut line
    return text.splitlines()


def _masked_tail(text: str, limit: int, mask: Mask | None) -> str | None:
    tail = _tail(text, limit)
    if tail is None:
        return None
    masked = _mask(tail, mask)
    # Spark's mark can be longer than the value it hides: cut again to stay in bounds.
    return masked if len(masked.encode()) <= limit else _tail(masked, limit)


def _tail(text: str, limit: int) -> str | None:
    """The last ``limit`` UTF-8 bytes of ``text``, from a line start (a character start when
    one line is longer than that)."""
    if limit <= 0 or not text:
        return None
    chunk = text[-limit:]  # at most ``limit`` characters: never fewer bytes than needed
    data = chunk.encode("utf-8", errors="replace")
    if len(data) <= limit and len(chunk) == len(text):
        return text
    cut = data[-limit:]
    before = data[-limit - 1 : -limit] if len(data) > limit else text[-limit - 1].encode()
    if before != b"\n":
        newline = cut.find(b"\n")
        if 0 <= newline < len(cut) - 1:
            cut = cut[newline + 1 :]
        else:
            cut = cut.lstrip(bytes(range(0x80, 0xC0)))  # continuation bytes of a cut character
    return cut.decode("utf-8", errors="replace") or None


def _mask(text: str, mask: Mask | None) -> str:
    redacted = printable(redact(text))
    return mask(redacted) if mask is not None else redacted


def _bound(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
