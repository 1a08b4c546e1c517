"""Push task changes to their owner's browser: render a partial, send it on the channel.

A receiver of the committed-change signals in ``taskstate.core.signals`` (connected in
``TaskstateConfig.ready``); views call :func:`publish_removed_tasks` for dismissed rows.

Sending happens in the background (``taskstate.web.courier``): a worker or a view only hands
the job over. A row or bar is rendered only when someone may receive it
(``taskstate.web.presence``): in the embedded setup, a user with no page open costs no
render. Messages are sent
with an empty event type, which htmx 4's ``hx-sse`` swaps (named events would only be
dispatched as DOM events). Rows go in ``<hx-upsert>`` so one
message both updates a row shown and inserts a new one; progress goes out-of-band to the
bar alone. The same job sends the JSON form of the change (``taskstate.web.task_json``) on the
user's JSON channel (``taskstate:json-events``) as named events ``task``, ``progress`` and
``removed``, when that channel may be listened to. A task about an object is also told to
the object's two channels (``taskstate:object-events``, ``taskstate:json-object-events``):
that it changed, its bar, its removal. Publishing is a notification: when it
fails the database is still right and the page resyncs from it, so errors are logged once
per outage and the channel is handed to the courier, which sends it ``stream-reset`` once
sending works again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.template.loader import render_to_string
from django.utils import translation

from taskstate.core.estimates import estimator
from taskstate.core.group_refresh import group_refresher
from taskstate.core.models import Task
from taskstate.core.states import Status
from taskstate.web.channels import json_channel, object_channels, own_channels, user_channel
from taskstate.web.courier import courier
from taskstate.web.presence import listened
from taskstate.web.task_json import (
    ChangedEvent,
    ProgressEvent,
    RemovedEvent,
    TaskJSON,
    dumps,
    progress_json,
    task_json,
)

logger = logging.getLogger("taskstate")

#: The SSE event type of every message: empty, so htmx swaps it.
EVENT_TYPE = ""
#: The event types of the JSON channels, whose data are ``taskstate.web.task_json`` shapes:
#: a task's row (``TaskJSON``, a user's channel only), a running attempt's bar
#: (``ProgressEvent``), tasks gone from the list (``RemovedEvent``), and on an object's
#: channel, that its tasks changed (``ChangedEvent``: as ``OBJECT_CHANGED_EVENT``).
TASK_EVENT = "task"
PROGRESS_EVENT = "progress"
REMOVED_EVENT = "removed"
CHANGED_EVENT = "changed"
#: The one named event: tells an object's list that its tasks changed (data: the pk of the
#: latest of the tasks told together, ``{"task": 12}``). The list reads its rows again
#: (``taskstate:object-list``), each page as its own user may see them.
OBJECT_CHANGED_EVENT = "taskstate-changed"
#: Running tasks about an object whose progress this process may publish.
_OBJECT_BARS_MAX = 10_000


def publish_task(task: Task) -> None:
    """Send ``task``'s row to its owner: upserted while unseen, removed once seen."""
    if task.user_id is None:
        return
    if task.seen:
        publish_removed(task.user_id, [task.pk])
        return
    courier.submit(
        _in_both_forms(lambda: _send_row(task), lambda: _send_task_json(task)),
        supersedes=("progress", task.pk),
        channel=own_channels(task.user_id),
    )


def publish_progress(
    task_pk: int, user_pk: Any, percent: int, message: str | None, order: int | None = None
) -> None:
    """Send the progress bar of a running attempt, built from what the worker knows.

    ``order`` (the attempt's order key) goes with the bar, so that a page showing a
    newer state of the row keeps it (taskstate.js).
    """
    if user_pk is None:
        return
    task = Task(pk=task_pk, status=Status.RUNNING, progress=percent, progress_message=message or "")
    task.state_order = order  # type: ignore[assignment]
    courier.submit(
        _in_both_forms(
            lambda: _send_bar(task, user_pk),
            lambda: _send_progress_json(json_channel(user_pk), task_pk, percent, message, order),
        ),
        replaces=("progress", task_pk),
        channel=own_channels(user_pk),
    )


def on_task_committed(sender: Any, *, task: Task, **kwargs: Any) -> None:
    """Receiver of ``taskstate.core.signals.task_committed``.

    A child of a group or pipeline is not sent on its own: its group's row is refreshed
    (throttled, see ``taskstate.core.group_refresh``) and sent instead.
    """
    estimator.observe(task)
    if task.parent_id is not None:
        group_refresher.changed(task.parent_id)
        return
    publish_task(task)
    publish_object_change(task)


def on_progress_committed(
    sender: Any,
    *,
    task_pk: int,
    user_pk: Any,
    percent: int,
    message: str | None,
    order: int | None = None,
    group_pk: int | None = None,
    **kwargs: Any,
) -> None:
    """Receiver of ``taskstate.core.signals.progress_committed``.

    A child's progress counts in its group's combined progress: the group is refreshed.
    """
    if group_pk is not None:
        group_refresher.changed(group_pk)
        return
    publish_progress(task_pk, user_pk, percent, message, order)
    publish_object_progress(task_pk, percent, message, order)


def publish_object_change(task: Task) -> None:
    """Tell the pages of the object ``task`` is about that its tasks changed.

    Not the row itself, in either form: its buttons (its ``actions``) depend on who looks
    (``taskstate.core.policy``), so each page reads its rows again. Changes that come together
    are told once.
    """
    if not task.object_type:
        return
    channels = object_channels(task.object_type, task.object_pk)
    _object_bars.follow(task, channels)
    html, as_json = channels
    pk = task.pk
    courier.submit(
        _in_both_forms(lambda: _notify(html, pk), lambda: _notify_json(as_json, pk)),
        replaces=("object-changed", html),
        channel=channels,
    )


def publish_object_progress(
    task_pk: int, percent: int, message: str | None, order: int | None = None
) -> None:
    """Send a running task's bar to its object's pages too (when this process published
    the task's start: progress is reported where the task runs)."""
    channels = _object_bars.channels(task_pk)
    if channels is None:
        return
    html, as_json = channels
    task = Task(pk=task_pk, status=Status.RUNNING, progress=percent, progress_message=message or "")
    task.state_order = order  # type: ignore[assignment]

    def send_bar() -> None:
        if listened(html):
            _send(html, render_to_string("taskstate/_progress.html", {"task": task, "oob": True}))

    courier.submit(
        _in_both_forms(
            send_bar, lambda: _send_progress_json(as_json, task_pk, percent, message, order)
        ),
        replaces=("object-progress", task_pk),
        channel=channels,
    )


class _ObjectBars:
    """The object channels of each running task about an object, in this process: its
    progress is announced with the task's keys alone. Bounded; the oldest go first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._channels: dict[int, tuple[str, str]] = {}

    def follow(self, task: Task, channels: tuple[str, str]) -> None:
        with self._lock:
            if task.status != Status.RUNNING:
                self._channels.pop(task.pk, None)
                return
            self._channels[task.pk] = channels
            while len(self._channels) > self._limit:
                del self._channels[next(iter(self._channels))]

    def channels(self, task_pk: int) -> tuple[str, str] | None:
        with self._lock:
            return self._channels.get(task_pk)


_object_bars = _ObjectBars(_OBJECT_BARS_MAX)


def _notify(channel: str, task_pk: int) -> None:
    if listened(channel):
        _send(channel, f'{{"task": {int(task_pk)}}}', event_type=OBJECT_CHANGED_EVENT)


def _notify_json(channel: str, task_pk: int) -> None:
    if listened(channel):
        payload: ChangedEvent = {"id": int(task_pk)}
        _send(channel, dumps(payload), CHANGED_EVENT)


def publish_removed(user_pk: Any, task_pks: Iterable[int]) -> None:
    """Remove rows from every page of the user (another tab dismissed them)."""
    pks = [int(pk) for pk in task_pks]
    if pks:
        html, as_json = own_channels(user_pk)
        courier.submit(_removal(html, as_json, pks), channel=(html, as_json))


def publish_object_removed(object_type: str, object_pk: str, task_pks: Iterable[int]) -> None:
    """Remove rows from every page of an object (its owner dismissed them)."""
    pks = [int(pk) for pk in task_pks]
    if pks and object_type:
        html, as_json = object_channels(object_type, object_pk)
        courier.submit(_removal(html, as_json, pks), channel=(html, as_json))


def publish_removed_tasks(tasks: Iterable[Task]) -> None:
    """Remove dismissed ``tasks`` from every page that shows them: their owners' and those
    of the objects they are about. Reads ``pk``, ``user_id``, ``object_type`` and
    ``object_pk`` alone."""
    by_owner: dict[Any, list[int]] = {}
    by_object: dict[tuple[str, str], list[int]] = {}
    for task in tasks:
        if task.user_id is not None:
            by_owner.setdefault(task.user_id, []).append(task.pk)
        if task.object_type:
            by_object.setdefault((task.object_type, task.object_pk), []).append(task.pk)
    for user_pk, pks in by_owner.items():
        publish_removed(user_pk, pks)
    for (object_type, object_pk), pks in by_object.items():
        publish_object_removed(object_type, object_pk, pks)


def _removal(html: str, as_json: str, pks: list[int]) -> Callable[[], None]:
    parts = "".join(
        f'<hx-partial hx-target="#taskstate-task-{pk}" hx-swap="delete"></hx-partial>' for pk in pks
    )

    def send_html() -> None:
        _send(html, parts)  # nothing to render: sent whoever listens

    def send_json() -> None:
        if listened(as_json):
            payload: RemovedEvent = {"ids": pks}
            _send(as_json, dumps(payload), REMOVED_EVENT)

    return _in_both_forms(send_html, send_json)


def _send_row(task: Task) -> None:
    channel = user_channel(task.user_id)
    if not listened(channel):
        return  # nobody to receive it: their next page reads the row from the database
    row = render_row(task)
    _send(channel, f'<hx-upsert hx-target="#taskstate-rows" sort="desc">{row}</hx-upsert>')


def render_row(task: Task) -> str:
    """``task``'s row as its owner's page shows it, without a request.

    In the language the task was sent in (``Task.language``), and with the traceback of a
    failed task only when its owner is staff (one query, for failed rows alone).
    """
    context = {"task": task, "show_traceback": _owner_is_staff(task)}
    if task.language and translation.check_for_language(task.language):
        with translation.override(task.language):
            return render_to_string("taskstate/_task_row.html", context)
    return render_to_string("taskstate/_task_row.html", context)


def _owner_is_staff(task: Task) -> bool:
    if task.status != Status.FAILED or not task.traceback or task.user_id is None:
        return False
    users = get_user_model()
    if not any(f.name == "is_staff" for f in users._meta.get_fields()):
        return False  # a custom user model without staff: nobody sees tracebacks
    return users._default_manager.filter(pk=task.user_id, is_staff=True).exists()


def _send_bar(task: Task, user_pk: Any) -> None:
    channel = user_channel(user_pk)
    if not listened(channel):
        return
    bar = render_to_string("taskstate/_progress.html", {"task": task, "oob": True})
    _send(channel, bar)


# --- the JSON stream (taskstate:json-events) ----------------------------------------
# Each change is one courier job that sends both forms, so the JSON form changes nothing
# of the HTML form's queueing, coalescing or resets. Each form is built only while its
# channel may be listened to (taskstate.web.presence): with events in this process, a site
# whose pages all use htmx pays the JSON channel's name and a dictionary lookup per change
# (benchmarks/json_stream_cost.py).


def _in_both_forms(html: Callable[[], None], json: Callable[[], None]) -> Callable[[], None]:
    def send() -> None:
        html()
        json()

    return send


def _send_task_json(task: Task) -> None:
    channel = json_channel(task.user_id)
    if listened(channel):
        _send(channel, dumps(_task_payload(task)), TASK_EVENT)


def _send_progress_json(
    channel: str, task_pk: int, percent: int, message: str | None, order: int | None
) -> None:
    if listened(channel):
        payload: ProgressEvent = {
            "id": task_pk,
            "status": "running",
            "progress": progress_json(percent, message),
            "order": order,
        }
        _send(channel, dumps(payload), PROGRESS_EVENT)


def _task_payload(task: Task) -> TaskJSON:
    if task.language and translation.check_for_language(task.language):
        with translation.override(task.language):
            return task_json(task)
    return task_json(task)


class _SendFailures:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down = False

    def failed(self) -> None:
        with self._lock:
            first, self.down = not self.down, True
        if first:
            logger.error(
                "taskstate: cannot publish task events; pages catch up when they "
                "reconnect. Further failures are logged at DEBUG.",
                exc_info=True,
            )
        else:
            logger.debug("taskstate: publishing still fails", exc_info=True)

    def sent(self) -> None:
        if self.down:
            with self._lock:
                self.down = False
            logger.warning("taskstate: publishing task events works again.")


_failures = _SendFailures()


def _send(channel: str, data: str, event_type: str = EVENT_TYPE) -> None:
    from django_eventstream import send_event

    try:
        send_event(channel, event_type, data, json_encode=False)
    except Exception:
        _failures.failed()
        courier.lost(channel)  # its pages get stream-reset once sending works again
    else:
        _failures.sent()
