"""Push committed changes to the pages that show them: render, then send on their channels.

Receivers of the signals in ``taskstate.core.signals`` (connected in
``TaskstateConfig.ready``). Each change is one job on the courier's thread
(``taskstate.web.courier``) that sends both forms, each only while its channel may be
listened to (``taskstate.web.presence``): HTML for htmx (unnamed events, which ``hx-sse``
swaps; rows in ``<hx-upsert>``, bars out-of-band) and JSON (``taskstate.web.task_json``).
A failed send is logged once per outage and ends in a ``stream-reset`` for its channel:
the database stays the truth, and pages resync from it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.contrib.auth import get_user_model
from django.template.loader import render_to_string
from django.utils import translation

from taskstate.core.estimates import estimator
from taskstate.core.group_refresh import group_refresher
from taskstate.core.models import Task
from taskstate.core.signals import Bar
from taskstate.core.states import Status
from taskstate.web.channels import object_channels, own_channels
from taskstate.web.courier import courier
from taskstate.web.presence import listened
from taskstate.web.task_json import (
    ChangedEvent,
    ProgressEvent,
    RemovedEvent,
    dumps,
    iso,
    progress_json,
    task_json,
)

logger = logging.getLogger("taskstate")
T = TypeVar("T")

#: The event type of every HTML message: empty, so htmx swaps it.
EVENT_TYPE = ""
#: The named events of the JSON channels: a row (a user's channel only), a running
#: attempt's bar, rows gone, and on an object's channel, that its tasks changed.
TASK_EVENT = "task"
PROGRESS_EVENT = "progress"
REMOVED_EVENT = "removed"
CHANGED_EVENT = "changed"
#: Tells an object's HTML list that its tasks changed (data ``{"task": 12}``): the list
#: reads its rows again (``taskstate:object-list``), with the buttons its own user may use.
OBJECT_CHANGED_EVENT = "taskstate-changed"
#: Running tasks about an object whose progress this process may publish.
_OBJECT_BARS_MAX = 10_000
#: The object channels of each running task about an object, in this process: its
#: progress is announced with the task's keys alone. Bounded; the oldest go first.
_object_bars: dict[int, tuple[str, str]] = {}
_object_bars_lock = threading.Lock()


def on_task_committed(sender: Any, *, task: Task, **kwargs: Any) -> None:
    """Receiver of ``task_committed``. A child of a group is not sent on its own: its
    group's row is refreshed (throttled, ``taskstate.core.group_refresh``) and sent."""
    estimator.observe(task)
    if task.parent_id is not None:
        group_refresher.changed(task.parent_id)
        return
    publish_task(task)
    publish_object_change(task)


def on_progress_committed(
    sender: Any, *, bar: Bar, user_pk: Any, group_pk: int | None = None, **kwargs: Any
) -> None:
    """Receiver of ``progress_committed``; a child's progress refreshes its group."""
    if group_pk is not None:
        group_refresher.changed(group_pk)
        return
    publish_progress(bar, user_pk)
    publish_object_progress(bar)


def publish_task(task: Task) -> None:
    """Send ``task``'s row to its owner: upserted while unseen, removed once seen."""
    if task.user_id is None:
        return
    if task.seen:
        publish_removed(task.user_id, [task.pk])
        return
    html, as_json = channels = own_channels(task.user_id)

    def send() -> None:
        if listened(html):  # else their next page reads the row from the database
            row = render_row(task)
            _send(html, f'<hx-upsert hx-target="#taskstate-rows" sort="desc">{row}</hx-upsert>')
        if listened(as_json):
            _send(as_json, dumps(_in_language(task, lambda: task_json(task))), TASK_EVENT)

    # A row of the task still waiting in the courier's queue gives way to this one, unless
    # it holds the later state (another thread announced it first): under load each
    # task's latest state is rendered once.
    updated = task.updated_at.timestamp() if task.updated_at else 0.0
    rank = (int(task.state_order or 0), updated)
    _submit(send, channels, supersedes=("progress", task.pk), replaces=("row", task.pk), rank=rank)


def publish_progress(bar: Bar, user_pk: Any) -> None:
    """Send a running attempt's bar to its owner, built from what the worker knows."""
    if user_pk is not None:
        channels = own_channels(user_pk)
        _submit(_bar(channels, bar), channels, replaces=("progress", bar.task_pk))


def publish_object_progress(bar: Bar) -> None:
    """Send a running task's bar to its object's pages too, when this process published
    the task's start (progress is reported where the task runs)."""
    channels = _object_bars.get(bar.task_pk)
    if channels is not None:
        send = _bar(channels, bar)
        _submit(send, channels, replaces=("object-progress", bar.task_pk))


def _bar(channels: tuple[str, str], bar: Bar) -> Callable[[], None]:
    html, as_json = channels

    def send() -> None:
        if listened(html):
            task = Task(
                pk=bar.task_pk,
                status=Status.RUNNING,
                progress=bar.percent,
                progress_message=bar.message or "",
            )
            task.state_order = bar.order  # type: ignore[assignment]
            task.updated_at = bar.updated  # type: ignore[assignment]
            _send(html, render_to_string("taskstate/_progress.html", {"task": task, "oob": True}))
        if listened(as_json):
            payload: ProgressEvent = {
                "id": bar.task_pk,
                "status": "running",
                "progress": progress_json(bar.percent, bar.message),
                "order": bar.order,
                "updated": iso(bar.updated),
            }
            _send(as_json, dumps(payload), PROGRESS_EVENT)

    return send


def publish_object_change(task: Task) -> None:
    """Tell the pages of the object ``task`` is about that its tasks changed.

    Not the row itself, in either form: its buttons depend on who looks
    (``taskstate.core.policy``), so each page reads its rows again. Changes that come
    together are told once.
    """
    if not task.object_type:
        return
    html, as_json = channels = object_channels(task.object_type, task.object_pk)
    _follow_bars(task, channels)
    pk = int(task.pk)

    def send() -> None:
        if listened(html):
            _send(html, f'{{"task": {pk}}}', OBJECT_CHANGED_EVENT)
        if listened(as_json):
            payload: ChangedEvent = {"id": pk}
            _send(as_json, dumps(payload), CHANGED_EVENT)

    _submit(send, channels, replaces=("object-changed", html))


def _follow_bars(task: Task, channels: tuple[str, str]) -> None:
    with _object_bars_lock:
        if task.status != Status.RUNNING:
            _object_bars.pop(task.pk, None)
            return
        _object_bars[task.pk] = channels
        while len(_object_bars) > _OBJECT_BARS_MAX:
            del _object_bars[next(iter(_object_bars))]


def publish_removed(user_pk: Any, task_pks: Iterable[int]) -> None:
    """Remove rows from every page of the user (another tab dismissed them)."""
    pks = [int(pk) for pk in task_pks]
    if pks:
        _remove(own_channels(user_pk), pks)


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
        _remove(object_channels(object_type, object_pk), [int(pk) for pk in pks])


def _remove(channels: tuple[str, str], pks: list[int]) -> None:
    html, as_json = channels
    parts = "".join(
        f'<hx-partial hx-target="#taskstate-task-{pk}" hx-swap="delete"></hx-partial>' for pk in pks
    )

    def send() -> None:
        _send(html, parts)  # nothing to render: sent whoever listens
        if listened(as_json):
            payload: RemovedEvent = {"ids": pks}
            _send(as_json, dumps(payload), REMOVED_EVENT)

    _submit(send, channels)


def _submit(send: Callable[[], None], channels: tuple[str, str], **keys: Any) -> None:
    """Hand ``send`` to the courier unless neither channel can reach a stream now: one
    opened later reads the database, which has the change (``taskstate.web.presence``).
    ``send`` asks again for each channel when it runs."""
    if listened(channels[0]) or listened(channels[1]):
        courier.submit(send, channel=channels, **keys)


def render_row(task: Task) -> str:
    """``task``'s row as its owner's page shows it, without a request.

    In the language the task was sent in (``Task.language``), and with the traceback of a
    failed task only when its owner is staff (one query, for failed rows alone).
    """
    context = {"task": task, "show_traceback": _owner_is_staff(task)}
    return _in_language(task, lambda: render_to_string("taskstate/_task_row.html", context))


def _in_language(task: Task, build: Callable[[], T]) -> T:
    if task.language and translation.check_for_language(task.language):
        with translation.override(task.language):
            return build()
    return build()


def _owner_is_staff(task: Task) -> bool:
    if task.status != Status.FAILED or not task.traceback or task.user_id is None:
        return False
    users = get_user_model()
    if not any(f.name == "is_staff" for f in users._meta.get_fields()):
        return False  # a custom user model without staff: nobody sees tracebacks
    return users._default_manager.filter(pk=task.user_id, is_staff=True).exists()


#: Set while sending fails, so that an outage is logged once.
_down = threading.Event()


def _send(channel: str, data: str, event_type: str = EVENT_TYPE) -> None:
    from django_eventstream import send_event

    try:
        send_event(channel, event_type, data, json_encode=False)
    except Exception:
        if _down.is_set():
            logger.debug("taskstate: publishing still fails", exc_info=True)
        else:
            _down.set()
            logger.error(
                "taskstate: cannot publish task events; pages catch up when they "
                "reconnect. Further failures are logged at DEBUG.",
                exc_info=True,
            )
        courier.lost(channel)  # its pages get stream-reset once sending works again
    else:
        if _down.is_set():
            _down.clear()
            logger.warning("taskstate: publishing task events works again.")
