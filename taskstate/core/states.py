"""Statuses and their order keys (``state_order``): a write lands only when it moves the
task forwards; a running key may repeat (a redelivery); nothing follows a terminal one::

    delayed 0 < enqueued 1 < running(n) 10n+5 < cancelling(n) 10n+6 < retrying(n) 10n+7
        < done | failed | skipped | cancelled
"""

from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.utils.translation import gettext_lazy as _


class Status(models.TextChoices):
    ENQUEUED = "enqueued", _("Queued")
    DELAYED = "delayed", _("Scheduled")
    RUNNING = "running", _("Running")
    RETRYING = "retrying", _("Retrying")
    FAILED = "failed", _("Failed")
    DONE = "done", _("Done")
    SKIPPED = "skipped", _("Skipped")
    CANCELLED = "cancelled", _("Cancelled")


class Kind(models.TextChoices):
    """What a row stands for: one message, or a group or pipeline of them (its children)."""

    TASK = "", _("Task")
    GROUP = "group", _("Group")
    PIPELINE = "pipeline", _("Pipeline")


#: Statuses after which nothing changes any more.
COMPLETE_STATUSES = (Status.DONE, Status.FAILED, Status.SKIPPED, Status.CANCELLED)
#: Statuses of a task that is still under way.
ACTIVE_STATUSES = (Status.ENQUEUED, Status.DELAYED, Status.RUNNING, Status.RETRYING)
#: Statuses from which a task may be sent again (``taskstate:retry``).
RETRYABLE_STATUSES = (Status.FAILED, Status.CANCELLED)

DELAYED_ORDER = 0
ENQUEUED_ORDER = 1
TERMINAL_ORDER = 1_000_000

#: ``error_type`` of a running task given up by the cleanup because its worker died.
ABANDONED_ERROR = "taskstate.WorkerLost"
#: ``error_type`` of a retrying or delayed task given up by the cleanup: its message
#: was due long ago and never ran (a purged queue, a broker that lost it).
LOST_ERROR = "taskstate.MessageLost"
#: ``error_type`` of a pipeline step that never ran because an earlier step failed.
NOT_RUN_ERROR = "taskstate.NotRun"
#: ``state_order`` of a child row written before its message was sent (status enqueued):
#: a pipeline step waiting for the step before it, or a group member not sent yet.
WAITING_ORDER = 0

#: What an owner may do to a task from its row (``TASKSTATE["CONTROL_POLICY"]``).
CANCEL = "cancel"
RETRY = "retry"


#: A cancel ends a scheduled task at once only when its message is due this much later
#: (plus twice CANCEL_CHECK_INTERVAL): by then every worker knows of the request, so none
#: can start its body (docs/owner-control.md).
CANCEL_AT_ONCE_MARGIN = 60.0


def cancel_at_once_margin(check_interval: float) -> timedelta:
    return timedelta(seconds=CANCEL_AT_ONCE_MARGIN + 2 * check_interval)


def running_order(attempt: int) -> int:
    """Order key of attempt ``attempt`` (from 1) while it runs."""
    return 10 * attempt + 5


def retrying_order(attempt: int) -> int:
    """Order key of the wait for a retry after attempt ``attempt`` failed."""
    return 10 * attempt + 7


def cancelling_order(attempt: int) -> int:
    """Order key of running attempt ``attempt`` once a cancel was requested."""
    return 10 * attempt + 6
