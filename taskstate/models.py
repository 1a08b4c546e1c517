"""The ``Task`` model, at the path Django and projects know (``taskstate.models``).

It is defined in :mod:`taskstate.core.models`, the layer both sides build on.
"""

from taskstate.core.models import (
    ACTIVE_STATUSES,
    COMPLETE_STATUSES,
    Kind,
    Status,
    Task,
    TaskQuerySet,
)

__all__ = ["ACTIVE_STATUSES", "COMPLETE_STATUSES", "Kind", "Status", "Task", "TaskQuerySet"]
