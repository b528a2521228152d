"""Command line (typer wiring only): ``spark-poller serve | check | jobs ... | db ... | events tail
| event-schema``. The work is done in server.py, checks.py, client.py, tail.py and migrate.py."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import typer
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from poller import display
from poller.client import DEFAULT_URL, EXIT_CODES_HELP, ApiClient, ApiError
from poller.config import Settings
from poller.masking import Masker, describe_failure, secret_values
from poller.schemas import DriverState, event_json_schema

EXIT_INVALID_CONFIG = 2
JOBS_PAGE = 50

app = typer.Typer(
    help="Submit Spark jobs, poll them, publish their completion events to Kafka.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help text: the settings table in `serve --help` keeps its lines as written.
    rich_markup_mode=None,
    # A traceback with local variables shows database URLs and Kafka passwords: never print one.
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)
jobs_app = typer.Typer(
    help=(
        "Look at and cancel the requests of a running service, through its API (--url, or"
        " POLLER_URL; the bearer token from POLLER_API_TOKEN).\n\n" + EXIT_CODES_HELP
    ),
    no_args_is_help=True,
)
db_app = typer.Typer(
    help="The database schema of our tables (alembic revisions), on POLLER_DATABASE_URL.",
    no_args_is_help=True,
)
events_app = typer.Typer(help="The completion events on POLLER_KAFKA_TOPIC.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(db_app, name="db")
app.add_typer(events_app, name="events")


# -- settings ------------------------------------------------------------------------------------


def load_settings() -> Settings:
    """The settings, or one line naming each bad variable and exit 2 (no value is quoted)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(_problem(err["loc"], err["msg"]) for err in exc.errors())
        typer.echo(f"invalid configuration: {problems}", err=True)
        raise typer.Exit(EXIT_INVALID_CONFIG) from None


def _problem(loc: tuple[int | str, ...], msg: str) -> str:
    name = "POLLER_" + "_".join(str(part) for part in loc).upper()
    msg = msg.removeprefix("Value error, ")
    return msg if msg.startswith(name) else f"{name}: {msg}"


def default_text(field: FieldInfo) -> str:
    """A setting's default as it would be written in its variable."""
    value: Any = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if isinstance(value, SecretStr):
        value = value.get_secret_value()  # a default is never a secret
    if value is None or value == []:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(str(item).rstrip("/") for item in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def settings_help() -> str:
    """Every POLLER_* variable, its default and meaning: one line each, from Settings."""
    rows = [
        (f"POLLER_{name.upper()}", default_text(field), field.description or "")
        for name, field in Settings.model_fields.items()
    ]
    name_width = max(len(row[0]) for row in rows)
    default_width = max(len(row[1]) for row in rows)
    lines = [f"{n:<{name_width}}  {d:<{default_width}}  {m}".rstrip() for n, d, m in rows]
    return "\b\n" + "\n".join(lines)


def _quiet_logging(settings: Settings) -> None:
    """A tool's own output says what failed; libraries' complaints go to stderr, masked, and
    only when serious."""
    from poller.logs import configure_logging

    configure_logging("ERROR", "text", secret_values(settings), stream=sys.stderr)


# -- top level -----------------------------------------------------------------------------------


def _version(show: bool) -> None:
    if show:
        try:
            typer.echo(f"spark-poller {version('spark-poller')}")
        except PackageNotFoundError:
            typer.echo("spark-poller (version unknown: not installed as a package)")
        raise typer.Exit()


@app.callback()
def main(
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Submit Spark jobs, poll them, publish their completion events to Kafka."""


SERVE_HELP = f"""Run the API and the scheduler (one process per job store; no uvicorn workers).

Settings come from POLLER_* environment variables; an invalid one stops the start with a line
naming it (exit 2). Logs go to stdout, one JSON object per line (POLLER_LOG_FORMAT=text for
humans). SIGTERM or Ctrl-C stops cleanly (exit 0); a fatal error exits 1.

Variables, defaults and meanings:

{settings_help()}
"""


@app.command(help=SERVE_HELP)
def serve() -> None:
    settings = load_settings()
    from poller import server  # the web stack, only for the command that serves

    server.run(settings)


@app.command()
def check() -> None:
    """Validate the configuration and reach every dependency once: the database (SELECT 1), the
    Kafka broker (metadata; the topic exists) and each Spark master of each cluster (its REST
    server answers; the master is ALIVE, or STANDBY beside an ALIVE one).

    Prints one line per dependency, "ok" or "FAIL" and why (secrets masked). Exit codes: 0 all
    ok; 1 a dependency failed; 2 invalid configuration.
    """
    from poller.checks import run_checks

    settings = load_settings()
    _quiet_logging(settings)
    results = run_checks(settings)
    for result in results:
        typer.echo(result.line())
    if not all(result.ok for result in results):
        raise typer.Exit(1)


@app.command("event-schema")
def event_schema() -> None:
    """Print the JSON Schema of the completion event's value."""
    typer.echo(json.dumps(event_json_schema(), indent=2))


# -- jobs ----------------------------------------------------------------------------------------

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="POLLER_URL", help="Base URL of the running service's API."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON, not a table.")]
RequestIdArgument = Annotated[str, typer.Argument(help="The request's request_id.")]


@contextmanager
def _api(url: str) -> Iterator[ApiClient]:
    """A client of the service; an API failure ends the command with one line and its code."""
    client = ApiClient(url, os.environ.get("POLLER_API_TOKEN") or None)
    try:
        yield client
    except ApiError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(exc.exit_code) from None
    finally:
        client.close()


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2))


@jobs_app.command("list", epilog=EXIT_CODES_HELP)
def jobs_list(
    state: Annotated[
        DriverState | None,
        typer.Option(case_sensitive=False, help="Only requests in this state."),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, help="Show at most this many requests, oldest first.")
    ] = JOBS_PAGE,
    every: Annotated[
        bool, typer.Option("--all", help="Show every matching request (overrides --limit).")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """List tracked requests, oldest first, following the API's pages (next_cursor)."""
    with _api(url) as api:
        listing = api.list_jobs(None if state is None else state.value, None if every else limit)
    if as_json:
        _print_json(
            {"items": listing.items, "total": listing.total, "next_cursor": listing.next_cursor}
        )
        return
    if listing.items:
        typer.echo(display.jobs_table(listing.items))
    footer = display.listing_footer(
        len(listing.items), listing.total, listing.next_cursor is not None
    )
    typer.echo(footer, err=True)


@jobs_app.command("show", epilog=EXIT_CODES_HELP)
def jobs_show(
    request_id: RequestIdArgument, url: UrlOption = DEFAULT_URL, as_json: JsonOption = False
) -> None:
    """Show one request's record: state, phase, Spark's last answer, times, event id."""
    with _api(url) as api:
        record = api.job(request_id)
    if as_json:
        _print_json(record)
    else:
        typer.echo(display.job_details(record))


@jobs_app.command("republish", epilog=EXIT_CODES_HELP)
def jobs_republish(
    request_id: RequestIdArgument, url: UrlOption = DEFAULT_URL, as_json: JsonOption = False
) -> None:
    """Publish a finished request's event again, exactly as it was (same event id), for a
    consumer that lost it (POST /jobs/REQUEST_ID/republish). Exit 6 while it is in flight."""
    with _api(url) as api:
        answer = api.republish(request_id)
    if as_json:
        _print_json(answer)
    else:
        typer.echo(
            f"{request_id}: its {answer.get('state')} event {answer.get('event_id')} is on the "
            "topic again"
        )


CANCEL_PHASES = {
    "done": "cancelled; its CANCELLED event is published",
    "cancelling": "kill sent; the CANCELLED event follows once Spark confirms the driver ended",
    "publishing": "cancelled; its CANCELLED event awaits Kafka's ack",
}


@jobs_app.command("cancel", epilog=EXIT_CODES_HELP)
def jobs_cancel(
    request_id: RequestIdArgument,
    kill: Annotated[
        bool,
        typer.Option(
            "--kill",
            help="Ask Spark to kill the driver first; the event waits for Spark to confirm.",
        ),
    ] = False,
    url: UrlOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Stop polling a request and publish its CANCELLED event (DELETE /jobs/REQUEST_ID)."""
    with _api(url) as api:
        record = api.cancel(request_id, kill)
    if as_json:
        _print_json(record)
        return
    phase = str(record.get("phase"))
    typer.echo(f"{request_id}: {CANCEL_PHASES.get(phase, f'phase {phase}')}")
    typer.echo(display.job_details(record))


# -- db ------------------------------------------------------------------------------------------


@contextmanager
def _database(settings: Settings) -> Iterator[Any]:
    """The engine, and a failure as one line (the URL never in it) and exit 1."""
    from poller.db import create_db_engine

    masker = Masker(secret_values(settings))
    try:
        engine = create_db_engine(
            settings.database_url.get_secret_value(),
            pool_size=1,
            timeout_s=settings.database_timeout_s,
        )
    except Exception as exc:
        typer.echo(f"error: {describe_failure(exc, masker)}", err=True)
        raise typer.Exit(1) from None
    try:
        yield engine
    except typer.Exit:
        raise
    except Exception as exc:
        typer.echo(f"error: {describe_failure(exc, masker)}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring our tables to this version's schema revision (safe to run from several processes
    at once; a database already there is left alone). Prints the revision.

    Exit codes: 0 done; 1 failed (the database unreachable, or ahead of this version); 2
    invalid configuration.
    """
    from poller import migrate

    settings = load_settings()
    _quiet_logging(settings)
    with _database(settings) as engine:
        revision = migrate.upgrade(engine)
    typer.echo(f"database schema at revision {revision} (head)")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and the one this version needs (head).

    Exit codes: 0 read (whatever the revision); 1 the database could not be read; 2 invalid
    configuration.
    """
    from poller import migrate
    from poller.checks import missing_sqlite_file

    settings = load_settings()
    _quiet_logging(settings)
    head = migrate.head()
    if missing_sqlite_file(settings.database_url.get_secret_value()):
        typer.echo(f"current: none (no database file yet)\nhead: {head}")
        return
    with _database(settings) as engine:
        revision = migrate.current(engine)
    if revision == head:
        typer.echo(f"current: {revision} (head)")
    elif revision is None:
        typer.echo(
            f"current: none (empty, or tables of a release before migrations)\nhead: {head}"
            "\nrun `spark-poller db upgrade` (or start with POLLER_AUTO_MIGRATE=true)"
        )
    else:
        typer.echo(
            f"current: {revision}\nhead: {head}\nrun `spark-poller db upgrade` (or start with"
            " POLLER_AUTO_MIGRATE=true)"
        )


# -- events --------------------------------------------------------------------------------------


@events_app.command("tail")
def events_tail(
    from_beginning: Annotated[
        bool,
        typer.Option(
            "--from-beginning", help="Start at the oldest event kept, not at the next one."
        ),
    ] = False,
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="Only this request's events (the key).")
    ] = None,
    max_events: Annotated[
        int | None, typer.Option("--max", min=1, help="Stop after this many events.")
    ] = None,
    timeout_s: Annotated[
        float | None,
        typer.Option("--timeout", min=0.1, help="Stop after this many seconds."),
    ] = None,
) -> None:
    """Print completion events from POLLER_KAFKA_TOPIC as JSON lines: key, value, headers
    (ce_*), partition, offset, timestamp. Uses the service's Kafka settings (security
    included) and commits no offset: a viewer.

    Exit codes: 0 stopped (--max reached, --timeout passed, or Ctrl-C); 1 the broker
    unreachable, the topic missing, or --timeout passed before --max events came; 2 invalid
    configuration.
    """
    from poller.tail import TailError, tail

    settings = load_settings()
    _quiet_logging(settings)

    def show(line: str) -> None:
        typer.echo(line)
        sys.stdout.flush()

    try:
        shown = tail(
            settings,
            show,
            from_beginning=from_beginning,
            request_id=request_id,
            max_events=max_events,
            timeout_s=timeout_s,
        )
    except TailError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        return
    if max_events is not None and timeout_s is not None and shown < max_events:
        typer.echo(f"timed out after {timeout_s:g}s: {shown} of {max_events} event(s)", err=True)
        raise typer.Exit(1)
