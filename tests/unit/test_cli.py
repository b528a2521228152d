"""The command line never prints a traceback with local variables, nor a secret when it fails."""

from __future__ import annotations

from pydantic import SecretStr

from poller.cli import app, describe_failure, secret_values
from poller.config import Settings
from poller.errors import StoreUnavailable


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
    assert line == "RuntimeError: bad *** and *** in Exception"  # "x" is not masked inside words
