"""The command line's pure parts: secrets masked, settings help, tables, API answers, events,
and the log lines (JSON and text) the service writes."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from apscheduler.schedulers.background import BackgroundScheduler
from pydantic import SecretStr
from requests.adapters import BaseAdapter
from typer.testing import CliRunner

from poller import display
from poller.checks import check_database
from poller.cli import app, default_text, settings_help
from poller.client import (
    EXIT_CONFLICT,
    EXIT_NOT_FOUND,
    EXIT_UNAUTHORIZED,
    EXIT_UNAVAILABLE,
    ApiClient,
    ApiError,
)
from poller.config import Settings
from poller.errors import StoreUnavailable
from poller.logs import add_log_context, current_log_context, log_context, log_handler, log_scope
from poller.masking import Masker, describe_failure, secret_values
from poller.tail import PRODUCER_ONLY, TailError, consumer_config, event_line, tail

# -- secrets -------------------------------------------------------------------------------------


def test_pretty_tracebacks_with_locals_are_off() -> None:
    # typer before 0.23 printed every frame's local variables by default (passwords included).
    assert app.pretty_exceptions_show_locals is False
    assert app.pretty_exceptions_enable is False


def test_a_failure_is_one_line_with_its_root_cause_and_no_secret() -> None:
    settings = Settings(
        database_url=SecretStr("postgresql+psycopg://poller:p%40ss-w0rd@db:5432/poller"),
        api_token=SecretStr("api-token-1"),
        kafka_sasl_password=SecretStr("sasl-pw-2"),
        kafka_extra_config={"ssl.key.password": SecretStr("key-pw-3"), "x": SecretStr("x")},
    )
    secrets = secret_values(settings)
    assert {"p%40ss-w0rd", "p@ss-w0rd", "api-token-1", "sasl-pw-2", "key-pw-3"} <= set(secrets)
    try:
        try:
            raise OSError("connect to db failed\nfor user poller, password p@ss-w0rd")
        except OSError as exc:
            raise StoreUnavailable("database unavailable: OperationalError") from exc
    except StoreUnavailable as exc:
        line = describe_failure(exc, secrets)
    assert line == "database unavailable: OperationalError (connect to db failed)"
    line = describe_failure(RuntimeError("bad key-pw-3 and sasl-pw-2 in Exception"), secrets)
    assert line == "RuntimeError: bad *** and *** in Exception"


def test_secrets_are_masked_as_whole_words_only() -> None:
    mask = Masker(["ab", "longer-ab-secret"])
    assert mask("ab about cab ab.") == "*** about cab ***."
    assert mask("x=longer-ab-secret;") == "x=***;"  # the longer secret whole, not its "ab"
    assert Masker([])("nothing to hide") == "nothing to hide"


def test_extra_kafka_settings_are_masked_unless_plainly_settings() -> None:
    """Masking "all" or "1" would garble every line holding those words."""
    settings = Settings(
        kafka_extra_config={
            "acks": SecretStr("all"),
            "compression.type": SecretStr("lz4"),
            "batch.size": SecretStr("100000"),
            "enable.ssl.certificate.verification": SecretStr("false"),
            "ssl.key.password": SecretStr("pw"),  # named a secret: masked however short
            "sasl.oauthbearer.client.secret": SecretStr("s3"),
            "client.rack": SecretStr("rack-7-unnamed-secret"),  # long enough to be one
        }
    )
    secrets = set(secret_values(settings))
    assert {"pw", "s3", "rack-7-unnamed-secret"} <= secrets
    assert not {"all", "lz4", "100000", "false"} & secrets


# -- logs ----------------------------------------------------------------------------------------


@pytest.fixture
def log_output() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of the test's own writing JSON lines (secret: "hunter2-pw") to a buffer."""
    stream = io.StringIO()
    logger = logging.getLogger(f"poller.test.{id(stream)}")
    handler = log_handler("json", ["hunter2-pw"], stream)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_time_level_logger_message_and_request_fields(
    log_output: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log_output
    with log_context(request_id="r-1", cluster="lab"):
        logger.info("polled %s", "r-1", extra={"submission_id": "driver-1"})
    logger.warning("outside")
    first, second = lines(stream)
    assert first == {
        "time": first["time"],
        "level": "INFO",
        "logger": logger.name,
        "message": "polled r-1",
        "request_id": "r-1",
        "submission_id": "driver-1",
        "cluster": "lab",
    }
    when = datetime.strptime(first["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - when).total_seconds()) < 60
    assert second["message"] == "outside"
    assert "request_id" not in second


def test_extra_wins_over_the_context(log_output: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log_output
    with log_context(request_id="outer"):
        logger.info("x", extra={"request_id": "inner"})
    assert lines(stream)[0]["request_id"] == "inner"


def test_an_exception_is_one_field_and_secrets_are_masked_everywhere(
    log_output: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log_output
    try:
        password = "hunter2-pw"  # a local: tracebacks never show it, only the text may
        raise ConnectionError(f"refused for password {password}")
    except ConnectionError:
        logger.exception("connect with %s failed", "hunter2-pw", extra={"cluster": "hunter2-pw"})
    assert len(stream.getvalue().splitlines()) == 1
    [line] = lines(stream)
    assert "hunter2-pw" not in stream.getvalue()
    assert line["message"] == "connect with *** failed"
    assert line["cluster"] == "***"
    assert line["exc_info"].startswith("Traceback (most recent call last):")
    assert line["exc_info"].endswith("ConnectionError: refused for password ***")


def test_text_lines_keep_the_human_format_with_the_request_appended() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("poller.test.text")
    handler = log_handler("text", ["hunter2-pw"], stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with log_context(request_id="r-2", submission_id="driver-2"):
            logger.warning("token hunter2-pw seen")
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue().rstrip("\n")
    head, _, rest = line.partition(" WARNING ")
    assert datetime.strptime(head, "%Y-%m-%d %H:%M:%S,%f")
    assert rest == "poller.test.text: token *** seen [request_id=r-2 submission_id=driver-2]"


def test_a_log_scope_ends_with_its_call_and_adds_nothing_outside_one() -> None:
    add_log_context(request_id="stray")  # no scope: ignored, nothing leaks to later lines
    assert current_log_context() == {}

    @log_scope
    def run() -> dict[str, str]:
        add_log_context(request_id="r-3")
        add_log_context(submission_id="driver-3", cluster=None)
        with log_context(cluster="lab"):
            assert current_log_context()["cluster"] == "lab"
        return dict(current_log_context())

    assert run() == {"request_id": "r-3", "submission_id": "driver-3"}
    assert current_log_context() == {}


def test_apscheduler_lines_carry_the_job_id_as_request_id(
    log_output: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log_output
    scheduler = BackgroundScheduler()
    job = scheduler.add_job(print, "interval", seconds=60, id="req-9", name="poll req-9")
    record = logging.LogRecord(
        "apscheduler.executors.default",
        logging.INFO,
        __file__,
        1,
        'Running job "%s" (scheduled at %s)',
        (job, datetime.now(UTC)),
        None,
    )
    removed = logging.LogRecord(
        "apscheduler.scheduler", logging.INFO, __file__, 1, "Removed job %s", ("req-8",), None
    )
    logger.handle(record)
    logger.handle(removed)
    first, second = lines(stream)
    assert first["request_id"] == "req-9"
    assert first["message"].startswith('Running job "poll req-9')
    assert second["request_id"] == "req-8"


def test_uvicorn_access_lines_get_fields(log_output: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = log_output
    args = ("127.0.0.1:5000", "GET", "/jobs?limit=1", "1.1", 200)
    logger.handle(
        logging.LogRecord(
            "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None
        )
    )
    [line] = lines(stream)
    assert (line["method"], line["path"], line["status"]) == ("GET", "/jobs?limit=1", 200)
    assert line["message"] == '127.0.0.1:5000 - "GET /jobs?limit=1 HTTP/1.1" 200'


# -- settings help -------------------------------------------------------------------------------


def test_serve_help_lists_every_variable_with_its_default_and_meaning() -> None:
    shown = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    lines_by_name = {
        line.split()[0]: line
        for line in shown.output.splitlines()
        if line.strip().startswith("POLLER_")
    }
    for name, field in Settings.model_fields.items():
        variable = f"POLLER_{name.upper()}"
        assert field.description, f"{variable} has no description"
        line = lines_by_name[variable]
        assert default_text(field) in line
        assert line.rstrip().endswith(field.description), line
    assert "sqlite:///./poller.db" in lines_by_name["POLLER_DATABASE_URL"]
    assert "unset" in lines_by_name["POLLER_API_TOKEN"]
    assert settings_help().startswith("\b\n")  # click keeps those lines as they are


def test_version_and_help_of_every_command() -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["--version"])
    assert shown.exit_code == 0
    assert shown.output.startswith("spark-poller ")
    for command in (
        ["check"],
        ["jobs"],
        ["jobs", "list"],
        ["jobs", "show"],
        ["jobs", "cancel"],
        ["db", "upgrade"],
        ["db", "current"],
        ["events", "tail"],
        ["event-schema"],
    ):
        shown = runner.invoke(app, [*command, "--help"])
        assert shown.exit_code == 0, (command, shown.output)
        assert "Usage:" in shown.output
    jobs_help = runner.invoke(app, ["jobs", "list", "--help"]).output
    assert "POLLER_URL" in jobs_help
    assert "Exit codes" in jobs_help
    assert "404" in jobs_help


def test_bad_options_are_usage_errors() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["jobs", "list", "--state", "NOPE"]).exit_code == 2
    assert runner.invoke(app, ["jobs", "list", "--limit", "0"]).exit_code == 2
    assert runner.invoke(app, ["events", "tail", "--max", "0"]).exit_code == 2


def test_invalid_configuration_exits_2_naming_the_variable() -> None:
    shown = CliRunner().invoke(app, ["check"], env={"POLLER_PORT": "0"})
    assert shown.exit_code == 2
    assert "invalid configuration: POLLER_PORT" in shown.output


def test_defaults_are_shown_as_written_in_a_variable() -> None:
    fields = Settings.model_fields
    assert default_text(fields["database_timeout_s"]) == "3"
    assert default_text(fields["kill_on_timeout"]) == "false"
    assert default_text(fields["spark_rest_url"]) == "http://localhost:6066"
    assert default_text(fields["clusters"]) == "{}"
    assert default_text(fields["allowed_app_resources"]) == "unset"


# -- tables --------------------------------------------------------------------------------------

RECORD: dict[str, Any] = {
    "request_id": "nightly-1",
    "cluster": "default",
    "submission_id": "driver-20261125121010-0000",
    "state": "FINISHED",
    "phase": "done",
    "spark_state": "FINISHED",
    "message": None,
    "labels": {"team": "ingest", "tier": "1"},
    "polls": 4,
    "submitted_at": "2026-11-25T12:10:10.744278Z",
    "completed_at": "2026-11-25T12:10:19.077624Z",
    "event_id": "d58e4f0a-950b-57fe-8831-5697fbe9288b",
}


def test_jobs_table_is_aligned_columns_one_line_a_request() -> None:
    second = {**RECORD, "request_id": "r", "submission_id": None, "completed_at": None}
    table = display.jobs_table([RECORD, second]).splitlines()
    assert table[0].split() == [header for header, _ in display.JOB_COLUMNS]
    assert table[1].split() == [
        "nightly-1",
        "default",
        "driver-20261125121010-0000",
        "FINISHED",
        "done",
        "4",
        "2026-11-25T12:10:10Z",
        "2026-11-25T12:10:19Z",
    ]
    assert table[2].split()[:3] == ["r", "default", "-"]
    # Every column starts at the same place on every line.
    starts = [table[0].index(header) for header, _ in display.JOB_COLUMNS]
    assert table[1].index("default") == starts[1]
    assert table[2].index("default") == starts[1]


def test_job_details_show_every_field_in_full() -> None:
    shown = dict(line.split(maxsplit=1) for line in display.job_details(RECORD).splitlines())
    assert shown["request_id"] == "nightly-1"
    assert shown["submitted_at"] == "2026-11-25T12:10:10.744278Z"
    assert shown["labels"] == "team=ingest,tier=1"
    assert shown["message"] == "-"


def test_listing_footer_says_how_to_see_the_rest() -> None:
    assert display.listing_footer(2, 2, more=False) == "2 of 2 request(s)"
    assert "--all" in display.listing_footer(50, 120, more=True)


# -- the API client ------------------------------------------------------------------------------


class FakeApi(BaseAdapter):
    """Answers the client's calls from a table of canned responses (a unit test's fake)."""

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.answer = answer
        self.calls: list[str] = []

    def send(
        self, request: requests.PreparedRequest, *_args: Any, **_kwargs: Any
    ) -> requests.Response:
        self.calls.append(str(request.url))
        status, body = self.answer(request)
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(body).encode()
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        pass


def client_of(answer: Any, token: str | None = None) -> tuple[ApiClient, FakeApi]:
    client = ApiClient("http://poller.test:8000", token)
    fake = FakeApi(answer)
    client.session.mount("http://", fake)
    return client, fake


def test_a_listing_follows_next_cursor_across_short_pages() -> None:
    """Pages stop early to stay under 1 MiB: the client keeps going until it has enough."""
    records = [{"request_id": f"r{i}"} for i in range(7)]

    def pages(request: requests.PreparedRequest) -> tuple[int, Any]:
        query = dict(part.split("=") for part in str(request.url).split("?")[1].split("&"))
        start, limit = int(query.get("cursor", "c0")[1:]), int(query["limit"])
        page = records[start : start + min(limit, 2)]  # never more than 2 a page
        following = f"c{start + len(page)}" if start + len(page) < len(records) else None
        return 200, {
            "items": page,
            "total": 7,
            "limit": limit,
            "offset": 0,
            "next_offset": None,
            "next_cursor": following,
        }

    client, fake = client_of(pages)
    everything = client.list_jobs(None, None)
    assert [r["request_id"] for r in everything.items] == [f"r{i}" for i in range(7)]
    assert (everything.total, everything.next_cursor) == (7, None)
    assert len(fake.calls) == 4
    some = client.list_jobs("RUNNING", 3)
    assert [r["request_id"] for r in some.items] == ["r0", "r1", "r2"]
    assert some.next_cursor == "c3"
    assert "state=RUNNING" in fake.calls[-1]


@pytest.mark.parametrize(
    ("status", "detail", "code", "message"),
    [
        (404, "no request 'x'", EXIT_NOT_FOUND, "not found (404): no request 'x'"),
        (
            409,
            "request 'x' already ended (FINISHED)",
            EXIT_CONFLICT,
            "conflict (409): request 'x' already ended (FINISHED)",
        ),
        (
            503,
            "database unavailable",
            EXIT_UNAVAILABLE,
            "service unavailable (503): database unavailable",
        ),
        (
            422,
            [{"loc": ["path", "request_id"], "msg": "bad id"}],
            1,
            "HTTP 422: path.request_id: bad id",
        ),
    ],
)
def test_api_refusals_are_one_line_and_an_exit_code(
    status: int, detail: Any, code: int, message: str
) -> None:
    client, _ = client_of(lambda _request: (status, {"detail": detail}))
    with pytest.raises(ApiError) as caught:
        client.job("x")
    assert (caught.value.exit_code, caught.value.message) == (code, message)


def test_a_refused_token_says_which_variable_to_set() -> None:
    refused = lambda _request: (401, {"detail": "missing or wrong bearer token"})  # noqa: E731
    for token, hint in ((None, "set POLLER_API_TOKEN"), ("wrong", "POLLER_API_TOKEN was refused")):
        client, _ = client_of(refused, token)
        with pytest.raises(ApiError) as caught:
            client.list_jobs(None, 10)
        assert caught.value.exit_code == EXIT_UNAUTHORIZED
        assert hint in caught.value.message


def test_request_ids_are_quoted_into_the_path() -> None:
    client, fake = client_of(lambda _request: (200, RECORD))
    client.cancel("a b/..", kill=True)
    assert fake.calls == ["http://poller.test:8000/jobs/a%20b%2F..?kill=true"]


# -- events tail ---------------------------------------------------------------------------------


def test_an_event_is_one_json_line_with_key_value_and_headers() -> None:
    value = json.dumps({"request_id": "r-1", "state": "FINISHED"}).encode()
    headers = [("ce_type", b"io.spark-poller.job.completed.v1"), ("ce_subject", b"r-1")]
    line = event_line(b"r-1", value, headers, 0, 41, 1_764_072_619_077)
    assert "\n" not in line
    shown = json.loads(line)
    assert shown["key"] == "r-1"
    assert shown["value"] == {"request_id": "r-1", "state": "FINISHED"}
    assert shown["headers"]["ce_subject"] == "r-1"
    assert (shown["partition"], shown["offset"]) == (0, 41)
    assert shown["timestamp"] == "2025-11-25T12:10:19.077000Z"
    assert json.loads(event_line(None, b"not json", None, 0, 1, None))["value"] == "not json"


def test_the_viewer_uses_the_producers_security_settings_and_commits_nothing() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="poller",
        kafka_sasl_password=SecretStr("sasl-pw"),
        kafka_extra_config={"ssl.endpoint.identification.algorithm": SecretStr("https")},
    )
    config = consumer_config(settings)
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.password"] == "sasl-pw"
    assert config["ssl.endpoint.identification.algorithm"] == "https"
    assert config["enable.auto.commit"] is False
    assert not PRODUCER_ONLY & config.keys()


def test_a_listing_that_does_not_move_on_stops_with_an_error() -> None:
    """A server answering the same next_cursor (or an empty page with more to come) would keep
    ``jobs list --all`` asking, and holding every page, for ever."""
    same = {"items": [{"request_id": "r0"}], "total": None, "limit": 1, "offset": 0}
    for page, calls in (
        ({**same, "next_cursor": "c"}, 2),
        ({**same, "items": [], "next_cursor": "d"}, 1),
    ):
        client, fake = client_of(lambda _request, page=page: (200, page))
        with pytest.raises(ApiError, match="does not move on"):
            client.list_jobs(None, None)
        assert len(fake.calls) == calls


@pytest.mark.parametrize(
    "hostile",
    [
        "boom \x1b]0;pwned\x07\x1b[2J",  # retitle and clear the terminal
        "a\nstate      FINISHED\r\x1b[1A",  # forge a line, move the cursor up
        "x\u202egnp.exe",  # reorder what follows
        "c1 \x9b2J",  # a C1 control sequence introducer
    ],
)
def test_anyones_text_cannot_drive_the_terminal(hostile: str) -> None:
    record = {"request_id": "r", "message": hostile, "labels": {"team": hostile, hostile: "v"}}
    for shown in (display.job_details(record), display.jobs_table([record])):
        assert all(ch == "\n" or (ch.isprintable() and ch != "\u202e") for ch in shown)
    details = display.job_details(record)
    assert len(details.splitlines()) == len([k for k in display.RECORD_FIELDS if k in record])
    assert "\\x1b" in details or "\\u202e" in details or "\\x9b" in details


def test_a_text_log_line_stays_one_line_whatever_its_message() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("poller.test.forged")
    logger.propagate = False
    logger.addHandler(log_handler("text", [], stream))
    try:
        logger.warning("GET /x\n2026-11-26 00:00:00 CRITICAL forged \x1b[2J -> 401")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.handlers.clear()
    first, second, *traceback = stream.getvalue().splitlines()
    assert "WARNING" in first
    assert "\\n2026-11-26" in first
    assert "\\x1b[2J" in first
    assert second.endswith("failed")
    assert traceback[0] == "Traceback (most recent call last):"


def test_a_json_log_line_is_ascii_so_no_control_reaches_a_terminal(
    log_output: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = log_output
    logger.warning("label \u202e and \x9b2J and é")
    text = stream.getvalue()
    assert text.isascii()
    assert lines(stream)[-1]["message"] == "label \u202e and \x9b2J and é"


def test_a_database_url_naming_a_missing_driver_is_one_fail_line() -> None:
    settings = Settings(database_url=SecretStr("postgresql+nosuchdriver://u:s3cr3t-pw@db/x"))
    result = check_database(settings, Masker(secret_values(settings)))
    assert not result.ok
    assert "s3cr3t-pw" not in result.detail
    assert "\n" not in result.detail


def test_events_tail_gives_up_on_an_unreachable_broker_within_its_timeout() -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1")
    started = time.monotonic()
    with pytest.raises(TailError, match="cannot reach the Kafka broker"):
        tail(settings, print, timeout_s=1.5)
    assert time.monotonic() - started < 5
