"""Who may cancel or retry a task: ``TASKSTATE["CONTROL_POLICY"]``, and what is possible.

A policy is a callable ``(user, task, action) -> bool`` named by a dotted path, where
``action`` is ``"cancel"`` or ``"retry"``. It says *who* may; whether the task can be
cancelled or retried at all (its status, a stored message) is decided here, before it is
asked. Views and the admin enforce it; the row template shows a button only where it
allows.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.utils.module_loading import import_string

from taskstate.conf import DEFAULTS, get_settings
from taskstate.states import ACTIVE_STATUSES, CANCEL, RETRY, RETRYABLE_STATUSES

if TYPE_CHECKING:
    from taskstate.models import Task

__all__ = ["CANCEL", "RETRY", "allowed", "owner_or_staff", "possible"]

logger = logging.getLogger("taskstate")
Policy = Callable[[Any, "Task", str], bool]


def owner_or_staff(user: Any, task: Task, action: str) -> bool:
    """The default policy: the task's owner, or staff with the change permission."""
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    if task.user_id is not None and user.pk == task.user_id:
        return True
    return bool(user.is_staff and user.has_perm("taskstate.change_task"))


def possible(task: Task, action: str) -> bool:
    """Whether ``task`` can take ``action`` at all, whoever asks."""
    if action == CANCEL:
        return task.status in ACTIVE_STATUSES and task.cancel_requested_at is None
    if action == RETRY:
        return task.status in RETRYABLE_STATUSES and bool(task.retry_message) and not task.seen
    return False


def allowed(user: Any, task: Task, action: str, *, owner: bool = False) -> bool:
    """Whether ``user`` may take ``action`` on ``task`` now. Never raises.

    ``owner=True``: ``user`` is unknown but is the task's owner (a row pushed to the
    owner's own channel has no request); the task's user is read only for a policy other
    than the default.
    """
    if not possible(task, action):
        return False
    path = get_settings().CONTROL_POLICY
    if owner and path == DEFAULTS["CONTROL_POLICY"]:
        return task.user_id is not None
    try:
        policy = _policy(path)
        if owner:
            user = task.user
        return bool(policy(user, task, action))
    except Exception:
        logger.exception("taskstate: CONTROL_POLICY %r failed; refusing %s.", path, action)
        return False


@functools.cache
def _policy(path: str) -> Policy:
    policy: Policy = import_string(path)
    return policy
