"""Waiting for this process's background threads, as a test or benchmark does before it
reads what they write or send."""

from __future__ import annotations


def flush(timeout: float = 5.0) -> bool:
    """Wait until everything handed over so far is written, its groups refreshed, the
    background jobs done and its events sent; whether all of it was done within
    ``timeout`` a step."""
    from taskstate.core.background import background
    from taskstate.core.group_refresh import group_refresher
    from taskstate.web.courier import courier
    from taskstate.worker.writer import writer

    written = writer.flush(timeout)
    refreshed = group_refresher.flush(timeout)
    done = background.flush(timeout)
    return courier.flush(timeout) and written and refreshed and done
