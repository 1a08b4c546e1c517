"""Who may see, cancel or retry a task (``TASKSTATE["CONTROL_POLICY"]``, a callable
``(user, task, action) -> bool``), and whether the task can take the action at all
(:func:`possible`, decided before the policy is asked). ``"view"`` is asked once per object
list or stream, with an unsaved ``Task`` that names the object (docs/owner-control.md).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string
from django.utils.translation import gettext

from taskstate.core.conf import DEFAULTS, get_settings
from taskstate.core.states import ACTIVE_STATUSES, CANCEL, RETRY, RETRYABLE_STATUSES

if TYPE_CHECKING:
    from taskstate.core.models import Task

__all__ = [
    "CANCEL",
    "RETRY",
    "VIEW",
    "allowed",
    "controlled_by_group",
    "group_only_reason",
    "may_dismiss",
    "may_see_object",
    "object_of",
    "owner_or_staff",
    "possible",
]

logger = logging.getLogger("taskstate")
Policy = Callable[[Any, "Task", str], bool]

#: The action of seeing the tasks about an object (their list, their stream).
VIEW = "view"
#: Attributes of a task: the object it is about, once loaded; the reads its list shares.
_OBJECT = "_taskstate_object"
_SHARED = "_taskstate_shared_objects"
_NOT_LOADED = object()


def owner_or_staff(user: Any, task: Task, action: str) -> bool:
    """The default policy: the task's owner; for a task about an object, whoever holds the
    object's ``view`` (to see) or ``change`` (to act) permission, on its model or on the
    object itself; and staff with the change permission of tasks."""
    if user is None or not getattr(user, "is_authenticated", False):
        return False
    if task.user_id is not None and user.pk == task.user_id:
        return True
    if task.object_type and _has_object_permission(user, task, action):
        return True
    return bool(user.is_staff and user.has_perm("taskstate.change_task"))


def _has_object_permission(user: Any, task: Task, action: str) -> bool:
    try:
        model = apps.get_model(task.object_type)
    except (LookupError, ValueError):
        return False
    codename = "view" if action == VIEW else "change"
    perm = f"{model._meta.app_label}.{codename}_{model._meta.model_name}"
    if user.has_perm(perm):
        return True
    obj = object_of(task)
    return obj is not None and bool(user.has_perm(perm, obj))


def object_of(task: Task) -> Any:
    """The object ``task`` is about, read once per task object; None when it is about
    none, or the object is gone."""
    loaded = getattr(task, _OBJECT, _NOT_LOADED)
    if loaded is not _NOT_LOADED:
        return loaded
    shared: dict[tuple[str, str], Any] = getattr(task, _SHARED, {})
    key = (task.object_type, task.object_pk)
    if key not in shared:
        shared[key] = None
        if task.object_type:
            try:
                model = apps.get_model(task.object_type)
                pk = model._meta.pk.to_python(task.object_pk)
                shared[key] = model._default_manager.filter(pk=pk).first()
            except (LookupError, ValueError, TypeError, ValidationError):
                pass
    setattr(task, _OBJECT, shared[key])
    return shared[key]


def share_object_reads(tasks: Iterable[Task]) -> None:
    """Let the rows of one list read each object they are about once, not once per row."""
    shared: dict[tuple[str, str], Any] = {}
    for task in tasks:
        setattr(task, _SHARED, shared)


def may_dismiss(user: Any, task: Task) -> bool:
    """Whether ``user`` may mark ``task`` seen: its owner alone, whatever the policy (seen is
    the owner's own mark). ``user=None``: the owner (a row pushed to their own channel)."""
    return user is None or (task.user_id is not None and task.user_id == user.pk)


def may_see_object(user: Any, object_type: str, object_pk: str, obj: Any = None) -> bool:
    """Whether the policy lets ``user`` see the tasks about an object (its list and its
    stream). ``obj``: the object itself, when the caller has it (saves a query)."""
    from taskstate.core.models import Task

    about = Task(object_type=object_type, object_pk=object_pk)
    if obj is not None:
        setattr(about, _OBJECT, obj)
    return allowed(user, about, VIEW)


def still_sees_object(user_pk: Any, object_type: str, object_pk: str) -> bool:
    """:func:`may_see_object` for a user read afresh (no cached permissions): a stream's check."""
    user = get_user_model()._default_manager.filter(pk=user_pk).first()
    if user is None or not getattr(user, "is_active", True):
        return False
    return may_see_object(user, object_type, object_pk)


def possible(task: Task, action: str) -> bool:
    """Whether ``task`` can take ``action`` at all, whoever asks: the one rule behind the
    row's buttons, the views and the admin actions."""
    if action == VIEW:
        return True
    if controlled_by_group(task):
        return False
    if action == CANCEL:
        return task.status in ACTIVE_STATUSES and task.cancel_requested_at is None
    if action == RETRY:
        return task.status in RETRYABLE_STATUSES and bool(task.retry_message) and not task.seen
    return False


def controlled_by_group(task: Task) -> bool:
    """Whether ``task`` is a child of a group or pipeline, cancelled and retried only with it:
    a step's own stored message would run the steps after it again (``pipe_target``)."""
    return task.parent_id is not None


def group_only_reason(action: str) -> str:
    """What to tell someone who asked for ``action`` on a child of a group or pipeline."""
    if action == CANCEL:
        return gettext(
            "This task belongs to a group or pipeline: it is cancelled with its group. "
            "Cancel the group."
        )
    return gettext(
        "This task belongs to a group or pipeline: it is retried with its group. Retry the group."
    )


def allowed(user: Any, task: Task, action: str, *, owner: bool = False) -> bool:
    """Whether ``user`` may take ``action`` on ``task`` now; never raises. ``owner=True``:
    ``user`` is the task's owner, unknown (a pushed row), read only for another policy."""
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
    return cast(Policy, import_string(path))
