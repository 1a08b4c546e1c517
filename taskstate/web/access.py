"""Which object's tasks, and which task, a request may reach: one rule for the HTML views
and the JSON ones.

Each refusal is a :class:`Refused` carrying the status both forms answer with; the HTML
views answer it as text (a 404 as Django's), the JSON views as an ``ErrorAnswer``.
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext

from taskstate.core.models import Task
from taskstate.core.policy import (
    VIEW,
    allowed,
    controlled_by_group,
    group_only_reason,
    may_see_object,
)
from taskstate.web.channels import object_of_token


class Refused(Exception):
    """A request refused: its HTTP status and what to tell the user, in their language."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def seen_object(user: Any, token: str) -> tuple[str, str]:
    """The ``(object_type, object_pk)`` a signed ``token`` names, when the policy lets
    ``user`` see its tasks. Refused: 404 for a token this site did not sign, 403 for an
    anonymous user or one the policy does not let see them."""
    about = object_of_token(token)
    if about is None:
        raise Refused(404, gettext("No such object."))
    if not getattr(user, "is_authenticated", False):
        raise Refused(403, gettext("Log in to follow these tasks."))
    if not may_see_object(user, *about):
        raise Refused(403, gettext("You may not see these tasks."))
    return about


def visible_task(user: Any, pk: int) -> Task:
    """The user's own task ``pk``, or one about an object the policy lets them see.
    Refused (404) for any other: a task they may not see is no task at all."""
    task = Task.objects.filter(pk=pk).first()
    if task is not None:
        if task.user_id is not None and task.user_id == user.pk:
            return task
        if task.object_type and allowed(user, task, VIEW):
            return task
    raise Refused(404, gettext("No such task."))


def controlled_task(user: Any, pk: int, action: str) -> Task:
    """The task ``pk`` when ``user`` may take ``action`` (cancel, retry) on it now.

    Refused: 404 for a task they may not see, and for their own task the policy refuses
    (it looks the same as no task); 409 for a child of a group or pipeline (a row they
    see: the message says what to do instead); 403 for a task they see through its
    object and may not take the action on.
    """
    task = visible_task(user, pk)
    if controlled_by_group(task):
        raise Refused(409, group_only_reason(action))
    if not allowed(user, task, action):
        if task.user_id is not None and task.user_id == user.pk:
            raise Refused(404, gettext("No such task."))
        raise Refused(403, gettext("You may not do this to this task."))
    return task
