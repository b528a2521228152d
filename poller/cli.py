"""Command line: ``spark-poller serve`` runs the HTTP API and the poll scheduler in one process."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from urllib.parse import unquote, urlsplit

import typer
import uvicorn
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from poller.api import create_app
from poller.config import Settings
from poller.errors import PollerError
from poller.schemas import event_json_schema
from poller.service import Service

app = typer.Typer(
    help="Submit Spark jobs, poll them, publish their completion events to Kafka.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback with local variables shows database URLs and Kafka passwords: never print one.
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FAILED_LIFESPAN = {
    "lifespan.startup.failed": "cannot start",
    "lifespan.shutdown.failed": "stop failed",
}
MAX_CAUSES = 20

logger = logging.getLogger(__name__)


class LifespanReport:
    """Reports a failed start (or stop) of the app as one line instead of a traceback.

    Starlette hands uvicorn the whole traceback of a failing lifespan to log: pages that bury
    the reason, with foreign exception texts that may quote connection settings.
    """

    def __init__(self, app: ASGIApp, secrets: list[str]) -> None:
        self.app = app
        self.secrets = secrets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        failed: list[str] = []

        async def without_traceback(message: Message) -> None:
            if message["type"] in FAILED_LIFESPAN:
                failed.append(FAILED_LIFESPAN[message["type"]])
                message = {"type": message["type"], "message": ""}
            await send(message)

        try:
            await self.app(scope, receive, without_traceback)
        except Exception as exc:
            if not failed:
                raise
            # Starlette told uvicorn before raising: uvicorn stops (non-zero) without a word more.
            logger.critical("%s: %s", failed[0], describe_failure(exc, self.secrets))


def describe_failure(exc: BaseException, secrets: Iterable[str]) -> str:
    """One line: the error, the first line of its root cause, and no known secret."""
    text = exc.message if isinstance(exc, PollerError) else f"{type(exc).__name__}: {exc}"
    root = exc
    for _ in range(MAX_CAUSES):
        cause = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
        if cause is None:
            break
        root = cause
    if root is not exc:
        lines = str(root).strip().splitlines()
        text += f" ({lines[0] if lines else type(root).__name__})"
    text = " ".join(text.split())
    for secret in sorted(secrets, key=len, reverse=True):
        # Whole words only: a short secret must not garble the words that happen to hold it.
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return text


def secret_values(settings: Settings) -> list[str]:
    """Every secret in the configuration, with the password inside the database URL."""
    url = settings.database_url.get_secret_value()
    values = [url]
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        values += [password, unquote(password)]
    held = [
        settings.api_token,
        settings.kafka_sasl_password,
        settings.spark_jws_secret,
        *settings.kafka_extra_config.values(),
        *(cluster.jws_secret for cluster in settings.clusters.values()),
    ]
    values += [secret.get_secret_value() for secret in held if secret is not None]
    return [value for value in values if value]


class BoundServer(uvicorn.Server):
    """Calls ``on_bound`` once the listening socket is bound: a process that cannot serve its
    port (another one holds it) never starts scheduling."""

    def __init__(self, config: uvicorn.Config, on_bound: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_bound = on_bound

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self.on_bound()


@app.callback()
def main() -> None:
    """spark-poller."""


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(_problem(err["loc"], err["msg"]) for err in exc.errors())
        typer.echo(f"invalid configuration: {problems}", err=True)
        raise typer.Exit(2) from None


def _problem(loc: tuple[int | str, ...], msg: str) -> str:
    name = "POLLER_" + "_".join(str(part) for part in loc).upper()
    msg = msg.removeprefix("Value error, ")
    return msg if msg.startswith(name) else f"{name}: {msg}"


@app.command("event-schema")
def event_schema() -> None:
    """Print the JSON Schema of the completion event's value."""
    typer.echo(json.dumps(event_json_schema(), indent=2))


@app.command()
def serve(log_level: str = typer.Option("INFO", envvar="POLLER_LOG_LEVEL")) -> None:
    """Run the API and the scheduler (one process per job store; no uvicorn workers)."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    # APScheduler logs every run at INFO; our poll job logs what matters.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    settings = load_settings()
    secrets = secret_values(settings)
    try:
        service = Service(settings)
    except Exception as exc:
        logger.critical("cannot start: %s", describe_failure(exc, secrets))
        raise typer.Exit(1) from None
    server = BoundServer(
        uvicorn.Config(
            LifespanReport(create_app(service), secrets),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        ),
        on_bound=service.activate,
    )

    def stop_server(_reason: str) -> None:
        server.should_exit = True

    service.on_fatal = stop_server
    # uvicorn re-raises SIGTERM once its graceful shutdown is done; that stop is a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1 if service.fatal else 0))
    try:
        server.run()
        code = 1 if service.fatal is not None or not server.started else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    # Everything is stopped and flushed: leave now rather than wait at exit for a worker thread
    # still inside a network call (each is bounded, but the stop must not wait for them).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
