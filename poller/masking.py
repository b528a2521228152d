"""Known secrets kept out of everything the service prints: log lines and one-line failures.

Foreign error texts (a driver's connection error, librdkafka's complaints) may quote connection
settings, so masking works on the final text, whoever wrote it. A secret is masked as a whole word
only: a short one must not garble the words that happen to hold it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from poller.config import Settings
from poller.errors import PollerError

MASK = "***"
MAX_CAUSES = 20
# POLLER_KAFKA_EXTRA_CONFIG holds settings and secrets alike. Values under a key that names a
# secret are always masked; other values only when long enough to be one and not a number or a
# boolean: masking "all", "lz4", "https" or "1" would garble every line holding those words.
_SECRET_KEY = re.compile(r"pass|secret|key|pem|token|jaas|credential|oauthbearer|sasl\.username")
_PLAIN_SETTING = re.compile(r"(?i)[0-9.]+|true|false")
MIN_UNNAMED_SECRET_CHARS = 8


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
        *(cluster.jws_secret for cluster in settings.clusters.values()),
    ]
    values += [secret.get_secret_value() for secret in held if secret is not None]
    for key, secret in settings.kafka_extra_config.items():
        value = secret.get_secret_value()
        if _SECRET_KEY.search(key.lower()) or (
            len(value) >= MIN_UNNAMED_SECRET_CHARS and not _PLAIN_SETTING.fullmatch(value)
        ):
            values.append(value)
    return [value for value in values if value]


class Masker:
    """Replaces each known secret in a text by ``***``; one compiled pattern for all of them."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first: a secret that contains another is masked whole.
        ordered = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pattern = (
            re.compile(
                r"(?<![A-Za-z0-9])(?:"
                + "|".join(re.escape(secret) for secret in ordered)
                + r")(?![A-Za-z0-9])"
            )
            if ordered
            else None
        )

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)


def describe_failure(exc: BaseException, secrets: Iterable[str] | Masker) -> str:
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
    masker = secrets if isinstance(secrets, Masker) else Masker(secrets)
    return masker(" ".join(text.split()))
