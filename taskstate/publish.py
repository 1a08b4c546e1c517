"""Push task changes to their owner's browser: render a partial, send it on the channel.

A receiver of the committed-change signals in ``taskstate.signals`` (connected in
``TaskstateConfig.ready``); views call :func:`publish_removed` for dismissed rows.

Sending happens in the background (``taskstate.courier``): a worker or a view only hands
the job over. A row or bar is rendered only when someone can receive it
(``taskstate.presence``): a user with no page open costs no render. Messages are sent
with an empty event type, which htmx 4's ``hx-sse`` swaps (named events would only be
dispatched as DOM events). Rows go in ``<hx-upsert>`` so one
message both updates a row shown and inserts a new one; progress goes out-of-band to the
bar alone. Publishing is a notification: when it fails the database is still right and
the page resyncs from it, so errors are logged once per outage and the channel is handed
to the courier, which sends it ``stream-reset`` once sending works again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.template.loader import render_to_string
from django.utils import translation

from taskstate.channels import user_channel
from taskstate.courier import courier
from taskstate.estimates import estimator
from taskstate.group_refresh import group_refresher
from taskstate.models import Task
from taskstate.presence import listened
from taskstate.states import Status
from taskstate.writer import writer

logger = logging.getLogger("taskstate")

#: The SSE event type of every message: empty, so htmx swaps it.
EVENT_TYPE = ""


def publish_task(task: Task) -> None:
    """Send ``task``'s row to its owner: upserted while unseen, removed once seen."""
    if task.user_id is None:
        return
    if task.seen:
        publish_removed(task.user_id, [task.pk])
        return
    courier.submit(
        lambda: _send_row(task),
        supersedes=("progress", task.pk),
        channel=user_channel(task.user_id),
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
        lambda: _send_bar(task, user_pk),
        replaces=("progress", task_pk),
        channel=user_channel(user_pk),
    )


def on_task_committed(sender: Any, *, task: Task, **kwargs: Any) -> None:
    """Receiver of ``taskstate.signals.task_committed``.

    A child of a group or pipeline is not sent on its own: its group's row is refreshed
    (throttled, see ``taskstate.group_refresh``) and sent instead.
    """
    estimator.observe(task)
    if task.parent_id is not None:
        group_refresher.changed(task.parent_id)
        return
    publish_task(task)


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
    """Receiver of ``taskstate.signals.progress_committed``.

    A child's progress counts in its group's combined progress: the group is refreshed.
    """
    if group_pk is not None:
        group_refresher.changed(group_pk)
        return
    publish_progress(task_pk, user_pk, percent, message, order)


def publish_removed(user_pk: Any, task_pks: Iterable[int]) -> None:
    """Remove rows from every page of the user (another tab dismissed them)."""
    parts = [
        f'<hx-partial hx-target="#taskstate-task-{int(pk)}" hx-swap="delete"></hx-partial>'
        for pk in task_pks
    ]
    if parts:
        channel = user_channel(user_pk)
        courier.submit(lambda: _send(channel, "".join(parts)), channel=channel)


def flush(timeout: float = 5.0) -> bool:
    """Wait until every event handed over so far has been sent (tests, shutdown).

    Changes handed to the background writer are written first, then groups with a change
    pending are refreshed, without waiting for their turn.
    """
    written = writer.flush(timeout)
    return group_refresher.flush(timeout) and courier.flush(timeout) and written


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


def _send(channel: str, html: str) -> None:
    from django_eventstream import send_event

    try:
        send_event(channel, EVENT_TYPE, html, json_encode=False)
    except Exception:
        _failures.failed()
        courier.lost(channel)  # its pages get stream-reset once sending works again
    else:
        _failures.sent()
