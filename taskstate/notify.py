"""What follows a committed write: the ``task_changed`` signal and the push to the browser."""

from __future__ import annotations

import logging

from taskstate.models import Task
from taskstate.signals import task_changed

logger = logging.getLogger("taskstate")


def task_written(task: Task, *, status_changed: bool) -> None:
    """Announce a committed change of ``task``. Never raises."""
    if status_changed:
        from taskstate.middleware import StateMiddleware

        for receiver, response in task_changed.send_robust(sender=StateMiddleware, task=task):
            if isinstance(response, Exception):
                logger.error(
                    "taskstate: task_changed receiver %r failed", receiver, exc_info=response
                )
    try:
        from taskstate.publish import publish_task

        publish_task(task)
    except Exception:
        logger.exception("taskstate: could not publish task %s", task.pk)
