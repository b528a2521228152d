"""Command line: ``spark-poller serve`` runs the HTTP API and the poll scheduler in one process."""

from __future__ import annotations

import json
import logging
import signal
import sys

import typer
import uvicorn
from pydantic import ValidationError

from poller.api import create_app
from poller.config import Settings
from poller.schemas import event_json_schema
from poller.service import Service

app = typer.Typer(
    help="Submit Spark jobs, poll them, publish their completion events to Kafka.",
    no_args_is_help=True,
    add_completion=False,
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@app.callback()
def main() -> None:
    """spark-poller."""


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"POLLER_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        typer.echo(f"invalid configuration: {problems}", err=True)
        raise typer.Exit(2) from None


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
    service = Service(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    )

    def stop_server(_reason: str) -> None:
        server.should_exit = True

    service.on_fatal = stop_server
    # uvicorn re-raises SIGTERM once its graceful shutdown is done; that stop is a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1 if service.fatal else 0))
    server.run()
    if service.fatal is not None or not server.started:
        raise typer.Exit(1)
