"""Run the cleanup periodically with APScheduler."""

from __future__ import annotations

from typing import Any

from taskstate.core.conf import get_settings

JOB_ID = "taskstate-cleanup"


def run_cleanup_job() -> None:
    """The job itself: clean up in this process, closing stale database connections."""
    from django.db import close_old_connections

    from taskstate.cleanup import cleanup

    close_old_connections()
    try:
        cleanup()
    finally:
        close_old_connections()


def add_cleanup_job(scheduler: Any, *, seconds: float | None = None, **job_kwargs: Any) -> Any:
    """Add the taskstate cleanup to an APScheduler 3 ``scheduler``, every ``seconds``
    (default ``CLEANUP_INTERVAL``); return the job. Adding it twice replaces the first."""
    interval = seconds if seconds is not None else get_settings().CLEANUP_INTERVAL
    options = {"id": JOB_ID, "replace_existing": True, "max_instances": 1, "coalesce": True}
    return scheduler.add_job(
        run_cleanup_job, "interval", seconds=interval, **{**options, **job_kwargs}
    )
