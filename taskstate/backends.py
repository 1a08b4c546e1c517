"""A ``django.tasks`` backend (Django >= 6.0) that runs ``@task`` functions on Dramatiq.

``TASKS = {"default": {"BACKEND": "taskstate.backends.DramatiqBackend", "QUEUES": [...]}}``.

Each ``@task`` function becomes a Dramatiq actor of its own, named by the function's
dotted path and declared on the broker when the ``Task`` is made (Django validates every
``Task`` with its backend): workers know it as soon as they import the module, as they do
for actors. Every message is tracked by ``StateMiddleware``, so results are read from the
``taskstate.core.models.Task`` rows; :func:`owned_by` gives the tasks enqueued inside it an
owner, whose live list then shows them. docs/django-tasks.md has the whole picture.
"""

from __future__ import annotations

import contextvars
import inspect
import os
import socket
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from typing import Any, ParamSpec, TypeVar, cast

import django
import dramatiq
from django.core import checks
from django.utils import timezone as dj_timezone
from django.utils.module_loading import import_string

if django.VERSION < (6, 0):  # pragma: no cover - the Django 5.2 cells import nothing here
    raise ImportError(
        "taskstate.backends needs Django >= 6.0 (django.tasks); this is Django "
        f"{django.get_version()}."
    )

from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import (
    DEFAULT_TASK_PRIORITY,
    TASK_MAX_PRIORITY,
    TASK_MIN_PRIORITY,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
)
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils.json import normalize_json

from taskstate.core.conf import get_settings
from taskstate.core.states import Status
from taskstate.worker.middleware import StateMiddleware
from taskstate.worker.tracking import current_run

__all__ = ["DramatiqBackend", "owned_by"]

_P = ParamSpec("_P")
_R = TypeVar("_R")

#: The message option that carries what the worker needs to rebuild the enqueued ``Task``.
TASK_OPTION = "taskstate_django_task"
#: The ``for_state`` keyword a tracked message carries: a task function may not take it.
_FOR_STATE = "for_state"
# Dramatiq's rule for queue names (its Actor refuses others).
_QUEUE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")

#: How a row's status reads as a ``django.tasks`` status.
STATUS_MAP: dict[str, TaskResultStatus] = {
    Status.ENQUEUED: TaskResultStatus.READY,
    Status.DELAYED: TaskResultStatus.READY,
    Status.RETRYING: TaskResultStatus.READY,
    Status.RUNNING: TaskResultStatus.RUNNING,
    Status.DONE: TaskResultStatus.SUCCESSFUL,
    Status.FAILED: TaskResultStatus.FAILED,
    Status.CANCELLED: TaskResultStatus.FAILED,
    Status.SKIPPED: TaskResultStatus.FAILED,
}
# What ended a cancelled or skipped task: its row keeps no error of its own.
_END_EXCEPTIONS = {
    Status.CANCELLED: "taskstate.Cancelled",
    Status.SKIPPED: "dramatiq.middleware.SkipMessage",
}

_owner: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "taskstate_django_task_owner", default=None
)
_declare_lock = threading.Lock()


@contextmanager
def owned_by(
    user: Any,
    *,
    description: str = "",
    app_name: str = "",
    model_name: str = "",
) -> Iterator[None]:
    """Give the ``@task`` functions enqueued inside this block an owner.

    ``user`` is a user or its primary key. The owner sees them in
    ``{% taskstate_list %}`` live, with progress, Cancel and Retry, as the tracked actors
    sent with ``for_state={"user_pk": ..., "description": ...}``. Works in sync and async
    code; the function's signature is unchanged::

        with owned_by(request.user, description="Export"):
            export.enqueue(report_id)
    """
    named = {"description": description, "app_name": app_name, "model_name": model_name}
    for_state = {"user_pk": getattr(user, "pk", user), **{k: v for k, v in named.items() if v}}
    token = _owner.set(for_state)
    try:
        yield
    finally:
        _owner.reset(token)


class DramatiqBackend(BaseTaskBackend):
    """Runs ``@task`` functions as Dramatiq actors; results come from taskstate's rows.

    ``OPTIONS``: ``MAX_RETRIES`` (default 0: Django's tasks are not retried unless asked),
    Dramatiq's ``max_retries`` of each task's actor.
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    # Only a RabbitMQ broker with max_priority orders its queue by priority (set per
    # instance, from the broker).
    supports_priority = False

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        broker = dramatiq.get_broker()
        self._max_priority = int(getattr(broker, "max_priority", None) or 0)
        self.supports_priority = self._max_priority > 0
        # Workers consume the queues their broker declared: each of ours, on every side.
        for queue_name in self.queues:
            if _valid_queue_name(queue_name):
                broker.declare_queue(queue_name)

    def validate_task(self, task: Task[..., Any]) -> None:
        super().validate_task(task)
        if not _valid_queue_name(task.queue_name):
            raise InvalidTask(
                f"Queue {task.queue_name!r} is not a Dramatiq queue name (letters, digits, "
                "'.', '_', '-'; not starting with a digit, '.' or '-')."
            )
        if _FOR_STATE in inspect.signature(task.func).parameters:
            raise InvalidTask(
                f"A task run by {type(self).__name__} cannot take a {_FOR_STATE!r} "
                "argument: taskstate passes it to the actor."
            )
        self._actor(task)

    def _actor(self, task: Task[..., Any]) -> dramatiq.Actor[Any, Any]:
        """The task's Dramatiq actor, declared on the broker the first time it is asked for."""
        broker = dramatiq.get_broker()
        name = task.module_path
        with _declare_lock:
            try:
                actor: dramatiq.Actor[Any, Any] = broker.get_actor(name)
            except dramatiq.errors.ActorNotFound:
                return dramatiq.Actor(
                    _actor_body(name),
                    broker=broker,
                    actor_name=name,
                    queue_name=task.queue_name,
                    priority=0,
                    options={"max_retries": int(self.options.get("MAX_RETRIES", 0))},
                )
        if not getattr(actor.fn, "_taskstate_task", None) == name:
            raise InvalidTask(
                f"A Dramatiq actor named {name!r} exists already: rename the task function."
            )
        return actor

    def enqueue(
        self, task: Task[_P, _R], args: list[Any], kwargs: dict[str, Any]
    ) -> TaskResult[_P, _R]:
        self.validate_task(task)
        if _FOR_STATE in kwargs:
            raise InvalidTask(
                f"{_FOR_STATE!r} is taskstate's own keyword: pass owners with owned_by()."
            )
        if not _reachable(task):
            raise InvalidTask(
                f"{task.module_path!r} does not lead to this Task: workers find a task by its "
                "dotted path, so define it at module level under its own name."
            )
        args = cast(list[Any], normalize_json(list(args)))
        kwargs = cast(dict[str, Any], normalize_json(dict(kwargs)))
        actor = self._actor(task)
        # Retryable: the row keeps the arguments (get_result's args and kwargs) and the
        # owner may send a failed task again.
        for_state = {**(_owner.get() or {}), "retryable": True}
        spec = {
            "backend": self.alias,
            "queue_name": task.queue_name,
            "priority": task.priority,
            "run_after": task.run_after.isoformat() if task.run_after else None,
        }
        options: dict[str, Any] = {TASK_OPTION: spec}
        if self.supports_priority and task.priority != DEFAULT_TASK_PRIORITY:
            options["broker_priority"] = _broker_priority(task.priority, self._max_priority)
        message = actor.message_with_options(
            args=tuple(args), kwargs={**kwargs, _FOR_STATE: for_state}, **options
        ).copy(queue_name=task.queue_name)
        actor.broker.declare_queue(task.queue_name)
        actor.broker.enqueue(message, delay=_delay_ms(task.run_after))
        result: TaskResult[_P, _R] = TaskResult(
            task=task,
            id=message.message_id,
            status=TaskResultStatus.READY,
            enqueued_at=datetime.fromtimestamp(message.message_timestamp / 1000, tz=timezone.utc),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[..., Any]:
        from taskstate.core.models import Task as Row

        row = (
            Row.objects.using(get_settings().DATABASE)
            .filter(message_id=str(result_id), kind="")
            .first()
        )
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        return _result_of(row, self.alias)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        messages: list[checks.CheckMessage] = list(super().check(**kwargs))
        broker = dramatiq.get_broker()
        if not any(isinstance(m, StateMiddleware) for m in broker.middleware):
            messages.append(
                checks.Error(
                    f"TASKS[{self.alias!r}] runs on Dramatiq, but the broker has no "
                    "StateMiddleware: no result is ever recorded.",
                    hint="Add 'taskstate.middleware.StateMiddleware' to "
                    "DRAMATIQ_BROKER['MIDDLEWARE'].",
                    id="taskstate.backends.E001",
                )
            )
        if not self.queues:
            messages.append(
                checks.Error(
                    f"TASKS[{self.alias!r}] allows any queue (QUEUES is empty): workers "
                    "consume only the queues they know.",
                    hint="List every queue name in QUEUES (default: ['default']).",
                    id="taskstate.backends.E002",
                )
            )
        declared = broker.get_declared_queues()
        for queue_name in sorted(self.queues):
            if not _valid_queue_name(queue_name):
                messages.append(
                    checks.Error(
                        f"TASKS[{self.alias!r}] queue {queue_name!r} is not a Dramatiq queue name.",
                        hint="Use letters, digits, '.', '_' and '-', starting with a letter or '_'.",
                        id="taskstate.backends.E003",
                    )
                )
            elif queue_name not in declared:
                messages.append(
                    checks.Error(
                        f"TASKS[{self.alias!r}] queue {queue_name!r} is unknown to the "
                        "Dramatiq broker.",
                        hint="Configure DRAMATIQ_BROKER before TASKS is used (the backend "
                        "declares its queues on the broker it finds).",
                        id="taskstate.backends.E004",
                    )
                )
        if not get_settings().STORE_RESULT:
            messages.append(
                checks.Warning(
                    f"TASKS[{self.alias!r}]: TASKSTATE['STORE_RESULT'] is False, so every "
                    "return_value reads None.",
                    hint="Set TASKSTATE['STORE_RESULT'] = True to keep return values.",
                    id="taskstate.backends.W001",
                )
            )
        return messages


# --- the worker side ----------------------------------------------------------------


def _actor_body(path: str) -> Any:
    """The function Dramatiq runs for the task at ``path``: the task's own body, reported."""

    def run(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop(_FOR_STATE, None)
        return _run(path, list(args), kwargs)

    run.__name__ = path.rpartition(".")[2]
    run.__qualname__ = run.__name__
    run._taskstate_task = path  # type: ignore[attr-defined]
    return run


def _run(path: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run one attempt of a ``@task`` function, sending Django's started/finished signals."""
    task = import_string(path)
    run = current_run()
    options = (run.options if run is not None else None) or {}
    spec = options.get(TASK_OPTION)
    task = _enqueued_task(task, spec if isinstance(spec, dict) else {})
    started = run.started_at if run is not None and run.started_at else dj_timezone.now()
    attempt = run.attempt if run is not None else 1
    result: TaskResult[..., Any] = TaskResult(
        task=task,
        id=run.origin.message_id if run is not None else "",
        status=TaskResultStatus.RUNNING,
        enqueued_at=run.origin.sent_at if run is not None else None,
        started_at=started,
        finished_at=None,
        last_attempted_at=started,
        args=args,
        kwargs=kwargs,
        backend=task.backend,
        errors=[],
        # The earlier attempts' workers are not known here (see docs/django-tasks.md).
        worker_ids=[""] * (attempt - 1) + [WORKER_ID],
    )
    sender = type(task.get_backend())
    task_started.send(sender=sender, task_result=result)
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        value = normalize_json(value)
    except BaseException as exc:
        object.__setattr__(result, "finished_at", dj_timezone.now())
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        error_path = f"{type(exc).__module__}.{type(exc).__qualname__}"
        result.errors.append(TaskError(exception_class_path=error_path, traceback=_tb(exc)))
        # Inside the handler, as Django's own backend sends it: its receivers see exc_info.
        task_finished.send(sender=sender, task_result=result)
        raise
    object.__setattr__(result, "finished_at", dj_timezone.now())
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "_return_value", value)
    task_finished.send(sender=sender, task_result=result)
    return value


#: This worker process, as ``worker_ids`` names it: host and process id.
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def _enqueued_task(task: Task[..., Any], spec: dict[str, Any]) -> Task[..., Any]:
    """The ``Task`` as it was enqueued (``using()`` changes travel in the message)."""
    changes = {k: spec[k] for k in ("backend", "queue_name") if isinstance(spec.get(k), str)}
    priority = spec.get("priority")
    if isinstance(priority, int) and not isinstance(priority, bool):
        changes["priority"] = priority
    if isinstance(spec.get("run_after"), str):
        with suppress(ValueError):
            changes["run_after"] = datetime.fromisoformat(spec["run_after"])
    if not changes:
        return task
    try:
        return task.using(**changes)
    except Exception:
        # A backend or queue renamed in the settings since it was sent: run it as defined.
        return task


def _result_of(row: Any, alias: str) -> TaskResult[..., Any]:
    try:
        task = import_string(row.actor_name)
    except ImportError as exc:
        raise TaskResultDoesNotExist(row.message_id) from exc
    if not isinstance(task, Task):
        raise TaskResultDoesNotExist(row.message_id)
    stored = row.retry_message if isinstance(row.retry_message, dict) else {}
    spec = (stored.get("options") or {}).get(TASK_OPTION) or {}
    task = _enqueued_task(task, spec if isinstance(spec, dict) else {})
    kwargs = dict(stored.get("kwargs") or {})
    kwargs.pop(_FOR_STATE, None)
    status = STATUS_MAP[row.status]
    result: TaskResult[..., Any] = TaskResult(
        task=task,
        id=row.message_id,
        status=status,
        enqueued_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at if status in _FINISHED else None,
        last_attempted_at=_last_attempted_at(row),
        args=list(stored.get("args") or []),
        kwargs=kwargs,
        backend=task.backend if spec else alias,
        errors=_errors(row),
        # One entry per attempt (attempts reads its length); the row keeps no worker name.
        worker_ids=[""] * row.attempts,
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", row.result)
    return result


_FINISHED = (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)


def _last_attempted_at(row: Any) -> datetime | None:
    """The current or last attempt's start (``attempt_started_at``).

    A row written before that column existed keeps only the first start, which is the
    last one only when there was a single attempt.
    """
    if row.attempt_started_at is not None:
        return cast(datetime, row.attempt_started_at)
    return cast(datetime | None, row.started_at) if row.attempts == 1 else None


def _errors(row: Any) -> list[TaskError]:
    """The error the row keeps: the last failed attempt's (a success clears it)."""
    if row.error_type:
        path = row.error_type if "." in row.error_type else f"builtins.{row.error_type}"
        return [TaskError(exception_class_path=path, traceback=row.traceback)]
    end = _END_EXCEPTIONS.get(row.status)
    return [TaskError(exception_class_path=end, traceback="")] if end else []


def _valid_queue_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and bool(name)
        and set(name) <= _QUEUE_NAME_CHARS
        and not (name[0].isdigit() or name[0] in ".-")
    )


def _reachable(task: Task[..., Any]) -> bool:
    try:
        found = import_string(task.module_path)
    except ImportError:
        return False
    return isinstance(found, Task) and found.func is task.func


def _delay_ms(run_after: datetime | None) -> int | None:
    if run_after is None:
        return None
    delay = (run_after - dj_timezone.now()).total_seconds()
    return int(delay * 1000) if delay > 0 else None


def _broker_priority(priority: int, max_priority: int) -> int:
    """Django's -100..100 (higher first) on RabbitMQ's 0..max_priority (higher first)."""
    low: int = TASK_MIN_PRIORITY
    return round((priority - low) * max_priority / (TASK_MAX_PRIORITY - low))


def _tb(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:
        return ""
