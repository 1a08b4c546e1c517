"""Logging filters of the demo site."""

from __future__ import annotations

import logging


class DropDiscardedResultWarning(logging.Filter):
    """Drop Dramatiq's "returned a value ... the value has been discarded" warning.

    Without a Results middleware Dramatiq warns whenever an actor returns something, but
    taskstate keeps the return value of tracked actors on their task (``Task.result``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name.startswith("dramatiq.worker")
            and "you haven't added the Results middleware" in str(record.msg)
        )
