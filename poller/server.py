"""Runs the service: the HTTP API under uvicorn and the scheduler, in one process per job store."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import NoReturn

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from poller.api import create_app
from poller.config import Settings
from poller.logs import configure_logging
from poller.masking import Masker, describe_failure, secret_values
from poller.service import Service

FAILED_LIFESPAN = {
    "lifespan.startup.failed": "cannot start",
    "lifespan.shutdown.failed": "stop failed",
}
API_GRACE_S = 10

logger = logging.getLogger(__name__)


class LifespanReport:
    """Reports a failed start (or stop) of the app as one line instead of a traceback.

    Starlette hands uvicorn the whole traceback of a failing lifespan to log: pages that bury
    the reason, with foreign exception texts that may quote connection settings.
    """

    def __init__(self, app: ASGIApp, masker: Masker) -> None:
        self.app = app
        self.masker = masker

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
            logger.critical("%s: %s", failed[0], describe_failure(exc, self.masker))


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


def run(settings: Settings) -> NoReturn:
    """Serve until SIGTERM/Ctrl-C (exit 0) or a fatal error (exit 1); never returns."""
    secrets = secret_values(settings)
    masker = Masker(secrets)
    configure_logging(settings.log_level, settings.log_format, secrets)
    try:
        service = Service(settings)
    except Exception as exc:
        logger.critical("cannot start: %s", describe_failure(exc, masker))
        _exit(1)
    server = BoundServer(
        uvicorn.Config(
            LifespanReport(create_app(service), masker),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=settings.access_log,
            timeout_graceful_shutdown=API_GRACE_S,
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
    _exit(code)


def _exit(code: int) -> NoReturn:
    # Everything is stopped and flushed: leave now rather than wait at exit for a worker thread
    # still inside a network call (each is bounded, but the stop must not wait for them).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
