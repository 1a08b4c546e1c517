"""Keep GRIP refresh tokens (``es-meta``, ``ts-stream``) out of the access logs of the
servers that log through :mod:`logging`; other logs are the operator's (docs/pushpin.md)."""

from __future__ import annotations

import logging
import re

#: Loggers whose records carry request paths with query strings.
ACCESS_LOGGERS = (
    "uvicorn.access",
    "gunicorn.access",
    "hypercorn.access",
    "django.server",  # Django's runserver
    "django.channels.server",  # daphne's runserver
)
_NAMES = ("es-meta", "ts-stream")


def _spelled_any_way(name: str) -> str:
    """A pattern for ``name``, any of its characters possibly %-encoded."""
    return "".join(f"(?:{re.escape(c)}|%{ord(c):02x})" for c in name)


_TOKEN = re.compile(
    r"((?:^|[?&;])(?:" + "|".join(_spelled_any_way(n) for n in _NAMES) + r")=)[^&;\s\"']*",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with the values of the token parameters redacted, however spelled."""
    return _TOKEN.sub(rf"\g<1>{REDACTED}", text)


class RedactStreamTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            # In place: gunicorn's (and hypercorn's) mapping is a dict subclass whose
            # lookups the format relies on ("-" for an absent header, any case).
            for key, value in list(dict.items(record.args)):
                if isinstance(value, str):
                    redacted = redact(value)
                    if redacted != value:
                        record.args[key] = redacted
        return True


def install() -> None:
    """Add the filter to every access logger (idempotent)."""
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactStreamTokens) for f in logger.filters):
            logger.addFilter(RedactStreamTokens())
