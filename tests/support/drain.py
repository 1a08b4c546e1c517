"""Waiting for this process's background threads, as a test or benchmark does before it
reads what they write or send, and stopping the stream check's thread after a test."""

from __future__ import annotations

from typing import Any


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


def stop_checks(registry: Any) -> None:
    """End the session check's thread of ``registry`` (a ``taskstate.web.streams``
    registry) and close its database connection; the next check starts a new one."""
    from taskstate.core.threads import close_idle_connections

    with registry._lock:
        executor, registry._checker = registry._checker, None
    if executor is not None:
        executor.submit(close_idle_connections).result()
        executor.shutdown()
