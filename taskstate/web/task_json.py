"""The JSON form of a task, for pages not built with htmx: one source for payloads and schema.

The ``TypedDict`` classes below are the shape; :func:`task_json` builds a :class:`TaskJSON`
from a row. ``scripts/json_schema.py`` derives the shipped JSON Schema
(``taskstate/static/taskstate/task.schema.json``) from the same classes, their docstrings
and the :class:`Doc` notes on their keys.

Every text comes from :func:`taskstate.core.values.clean_text` (no lone surrogates, no NUL) and
is cut to a bound, numbers are integers, and the result appears only as its link: a
payload is always strict JSON (:func:`dumps` refuses NaN rather than write it), and never
larger than a few kilobytes, whatever an actor returned.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, TypedDict
from urllib.parse import urlsplit

from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext

from taskstate.core.policy import CANCEL, RETRY, allowed, may_dismiss
from taskstate.core.states import COMPLETE_STATUSES, Status
from taskstate.core.values import clean_text

if typing.TYPE_CHECKING:
    from taskstate.core.models import Task

#: Longest error message a payload carries (the row's summary shows as much).
ERROR_MESSAGE_LIMIT = 2000
#: Longest description, progress message or label a payload carries (their columns').
TEXT_LIMIT = 255
#: Longest result link a payload carries (longer ones are not links, as on the row).
URL_LIMIT = 2048

StatusName = Literal[
    "enqueued", "delayed", "running", "retrying", "failed", "done", "skipped", "cancelled"
]


@dataclass(frozen=True)
class Doc:
    """What a key means, for the schema (``Annotated[int, Doc("...")]``)."""

    text: str
    format: str | None = None
    minimum: int | None = None
    maximum: int | None = None


class Progress(TypedDict):
    """How far the current attempt is."""

    percent: Annotated[int, Doc("0 to 100.", minimum=0, maximum=100)]
    message: Annotated[str, Doc("What the actor last said it is doing; may be empty.")]


class Times(TypedDict):
    """When things happened (ISO 8601 with the offset), or null when they have not."""

    created: Annotated[str, Doc("When the message was sent.", format="date-time")]
    started: Annotated[str | None, Doc("The first attempt's start.", format="date-time")]
    finished: Annotated[str | None, Doc("When the task ended.", format="date-time")]
    updated: Annotated[str, Doc("The row's last change.", format="date-time")]
    due: Annotated[
        str | None,
        Doc("When a scheduled message or the next attempt is due.", format="date-time"),
    ]


class ErrorSummary(TypedDict):
    """Why the task failed, or why its last attempt did (while it is retrying)."""

    type: Annotated[str, Doc("The exception's dotted name; may be empty.")]
    message: Annotated[str, Doc("The error's message, cut to 2000 characters; may be empty.")]


class Actions(TypedDict, total=False):
    """What the requesting user (on the user's stream: the owner) may do now: each key
    present is allowed, and its value is the URL to POST to (answers in JSON, CSRF token
    required)."""

    cancel: Annotated[str, Doc("Ask the task to stop (taskstate:json-cancel).")]
    retry: Annotated[str, Doc("Send it again as a new task (taskstate:json-retry).")]
    dismiss: Annotated[
        str, Doc("Mark the finished task seen (taskstate:json-seen); its owner only.")
    ]


class GroupCounts(TypedDict):
    """A group or pipeline row stands for its children: how many there are, and how they do."""

    kind: Literal["group", "pipeline"]
    total: Annotated[int, Doc("Children in all.", minimum=0)]
    done: Annotated[int, Doc("Children done.", minimum=0)]
    failed: Annotated[int, Doc("Children failed.", minimum=0)]
    running: Annotated[int, Doc("Children running now.", minimum=0)]


class TaskJSON(TypedDict):
    """One task as its owner's list shows it."""

    id: Annotated[int, Doc("The task's primary key; stable for the task's life.")]
    status: Annotated[StatusName, Doc("Never moves backwards.")]
    label: Annotated[str, Doc("The status in words, in the task's language.")]
    cancelling: Annotated[bool, Doc("A cancel was asked for and the task has not ended yet.")]
    complete: Annotated[bool, Doc("done, failed, skipped or cancelled.")]
    order: Annotated[
        int,
        Doc(
            "Each state of a task has a higher order than the states before it: keep the "
            "payload with the higher order when two arrive out of turn.",
            minimum=0,
        ),
    ]
    description: Annotated[str, Doc("What the sender called it, else the actor's name.")]
    actor: Annotated[str, Doc("The Dramatiq actor's name.")]
    progress: Progress
    times: Times
    attempts: Annotated[int, Doc("Attempts started so far.", minimum=0)]
    seen: Annotated[bool, Doc("Dismissed by its owner (shown a few seconds more).")]
    result_url: Annotated[
        str | None, Doc("Where the result of a done task is (http, https or a path), or null.")
    ]
    error: Annotated[ErrorSummary | None, Doc("Set for failed and retrying tasks.")]
    actions: Actions
    group: Annotated[GroupCounts | None, Doc("Set for a group or pipeline row.")]
    retry_of: Annotated[int | None, Doc("The task this one retries, or null.")]


class TaskPage(TypedDict):
    """One page of the user's task list (``taskstate:json-list``), or of the tasks about an
    object (``taskstate:json-object-list``), newest first."""

    tasks: list[TaskJSON]
    count: Annotated[int, Doc("Tasks on all pages.", minimum=0)]
    page: Annotated[int, Doc("This page's number, from 1.", minimum=1)]
    pages: Annotated[int, Doc("How many pages there are.", minimum=1)]
    next: Annotated[str | None, Doc("The next page's URL, or null on the last.")]
    previous: Annotated[str | None, Doc("The previous page's URL, or null on the first.")]


class ProgressEvent(TypedDict):
    """The data of a ``progress`` event: a running attempt's bar, sent between rows."""

    id: Annotated[int, Doc("The task's primary key.")]
    status: Literal["running"]
    progress: Progress
    order: Annotated[int | None, Doc("The attempt's order; ignore the event when lower.")]
    updated: Annotated[
        str | None,
        Doc(
            "When the row was written (as times.updated); of two with the same order, "
            "the later wins.",
            format="date-time",
        ),
    ]


class RemovedEvent(TypedDict):
    """The data of a ``removed`` event: tasks no page of the user (or of the object) shows
    any more."""

    ids: list[int]


class ChangedEvent(TypedDict):
    """The data of a ``changed`` event on an object's stream: its tasks changed; read its
    list again (``taskstate:json-object-list``), whose actions are the reader's own."""

    id: Annotated[int, Doc("The task that changed (the latest of those told together).")]


class ActionAnswer(TypedDict):
    """The answer to a POST to cancel, retry or dismiss (JSON endpoints)."""

    task: Annotated[TaskJSON | None, Doc("The task as it is now (cancel), else null.")]
    removed: Annotated[list[int], Doc("Tasks taken off the list (retry, dismiss).")]


class ErrorAnswer(TypedDict):
    """The body of any 4xx answer of a JSON endpoint."""

    error: Annotated[str, Doc("What went wrong, in words.")]


# --- building payloads ----------------------------------------------------------------


def task_json(task: Task, user: Any = None) -> TaskJSON:
    """``task`` as JSON-ready data. ``user``: whom the actions are for (``None``: the
    task's owner, for the owner's stream, which has no request)."""
    # The status in words, as the row's badge reads (in the active language).
    label = gettext("Cancelling…") if task.is_cancelling else str(task.get_status_display())
    return {
        "id": task.pk,
        "status": typing.cast(StatusName, str(task.status)),
        "label": clean_text(label, TEXT_LIMIT),
        "cancelling": task.is_cancelling,
        "complete": task.status in COMPLETE_STATUSES,
        "order": int(task.state_order or 0),
        "description": clean_text(task.description or task.actor_name, TEXT_LIMIT),
        "actor": clean_text(task.actor_name, TEXT_LIMIT),
        "progress": progress_json(task.progress, task.progress_message),
        "times": {
            "created": iso(task.created_at) or "",
            "started": iso(task.started_at),
            "finished": iso(task.finished_at),
            "updated": iso(task.updated_at) or "",
            "due": iso(task.due_at),
        },
        "attempts": int(task.attempts or 0),
        "seen": bool(task.seen),
        "result_url": result_url(task) or None,
        "error": _error(task),
        "actions": actions(task, user),
        "group": _group(task),
        "retry_of": task.retry_of_id,
    }


def progress_json(percent: Any, message: Any) -> Progress:
    return {
        "percent": min(max(int(percent or 0), 0), 100),
        "message": clean_text(str(message or ""), TEXT_LIMIT),
    }


def actions(task: Task, user: Any = None) -> Actions:
    """The allowed actions and their URLs, by the rules of the row's buttons."""
    owner = user is None
    answer: Actions = {}
    if allowed(user, task, CANCEL, owner=owner):
        answer["cancel"] = reverse("taskstate:json-cancel", args=[task.pk])
    if allowed(user, task, RETRY, owner=owner):
        answer["retry"] = reverse("taskstate:json-retry", args=[task.pk])
    if task.status in COMPLETE_STATUSES and not task.seen and may_dismiss(user, task):
        answer["dismiss"] = reverse("taskstate:json-seen", args=[task.pk])
    return answer


def result_url(task: Task) -> str:
    """The ``url`` of a done task's result when it is a link to follow, else "".

    Only ``http``/``https`` URLs and paths on this site: never ``javascript:``, ``data:``
    or anything a browser could run.
    """
    result = task.result
    if not isinstance(result, dict) or task.status != Status.DONE:
        return ""
    url = result.get("url")
    if not isinstance(url, str) or not url or len(url) > URL_LIMIT or clean_text(url) != url:
        return ""
    if any(ord(c) <= 0x20 or c == "\\" or ord(c) == 0x7F for c in url):
        return ""  # browsers ignore some of these inside a scheme ("java\tscript:")
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return url
    if not parts.scheme and not parts.netloc and not url.startswith("//"):
        return url
    return ""


def _error(task: Task) -> ErrorSummary | None:
    if task.status not in (Status.FAILED, Status.RETRYING) and not (
        task.kind and task.children_failed and task.error_message
    ):
        return None
    if not task.error_type and not task.error_message:
        return None
    return {
        "type": clean_text(task.error_type, TEXT_LIMIT),
        "message": clean_text(task.error_message, ERROR_MESSAGE_LIMIT),
    }


def _group(task: Task) -> GroupCounts | None:
    if not task.kind:
        return None
    return {
        "kind": "pipeline" if task.kind == "pipeline" else "group",
        "total": int(task.children_total),
        "done": int(task.children_done),
        "failed": int(task.children_failed),
        "running": int(task.children_running),
    }


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with the offset; a naive value (``USE_TZ = False``) is in ``TIME_ZONE``."""
    if value is None:
        return None
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return value.isoformat()


def dumps(payload: Any) -> str:
    """``payload`` as strict JSON text: UTF-8 ready, no NaN (raises ``ValueError``)."""
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
