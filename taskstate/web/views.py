"""Thin views: the event stream, the list partial, marking tasks seen, cancel and retry."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from django.contrib.auth.decorators import login_required
from django.db import connections, transaction
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseForbidden,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, render, resolve_url
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from taskstate.core import control
from taskstate.core.conf import get_settings
from taskstate.core.models import Task
from taskstate.core.policy import CANCEL, RETRY, share_object_reads, still_sees_object
from taskstate.web import streams
from taskstate.web.access import Refused, controlled_task, seen_object, visible_task
from taskstate.web.channels import (
    admit,
    json_channel,
    object_channels,
    object_of_token,
    user_channel,
)
from taskstate.web.publish import publish_removed_tasks

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser

logger = logging.getLogger("taskstate")


@require_GET
@transaction.non_atomic_requests
def events(request: HttpRequest, form: str = "html") -> HttpResponseBase:
    """The SSE stream of the logged-in user's own channel, and no other.

    ``form="json"`` (``taskstate:json-events``): the channel of the JSON form of the
    user's tasks (``taskstate.web.channels.json_channel``), under every same rule.

    The channel comes from the session, never from the request: query parameters
    such as ``channel`` are ignored. One exception: behind a GRIP proxy (Pushpin), the
    proxy refreshes each held stream through the "next" link django-eventstream gave it,
    without the browser's cookies; that request must carry the proxy's verified
    signature, and the session the stream was opened with must still be valid
    (``taskstate.web.streams``). A stream served here ends when its session does.

    This is the only door to a taskstate channel: django-eventstream serves one only
    to a user this view admitted (``taskstate.web.channels``), so its own views refuse them.
    """
    refused = streams.refuse_unsigned_grip_parameters(request)
    if refused is not None:
        return refused
    if streams.grip_signed(request) and "es-meta" in request.GET:
        refused = streams.check_refresh(request)
        if refused is not None:
            return refused
        return _held(request, _own_channel(request, form))
    if not request.user.is_authenticated:
        return HttpResponseForbidden("Log in to follow your tasks.")
    if "wsgi.version" in request.META and not streams.grip_signed(request):
        return _cannot_stream(request)
    if streams.grip_signed(request):
        streams.add_session_reference(request)
        return _held(request, _own_channel(request, form))
    session = getattr(request, "session", None)
    stream = streams.registry.admit(request.user.pk, getattr(session, "session_key", None))
    if stream is None:
        return streams.too_many_streams()
    response = _stream(request, _own_channel(request, form))
    if isinstance(response, StreamingHttpResponse):
        streams.guard(response, stream)
    else:
        streams.registry.remove(stream)
    # Under ASGI this request keeps its own thread, and with it the database connection
    # the session and user were read through, until the stream ends: one connection per
    # open page, for hours. The stream itself reads nothing, so give the connection back.
    _release_connections()
    return response


def _own_channel(request: HttpRequest, form: str) -> str:
    """The request's user's own channel of ``form``."""
    return json_channel(request.user.pk) if form == "json" else user_channel(request.user.pk)


def _stream(request: HttpRequest, channel: str) -> HttpResponseBase:
    """django-eventstream's answer for ``channel``, the checks done: the user is admitted
    to it (``taskstate.web.channels.admit``), which no other door's request is."""
    from django_eventstream.views import events as eventstream_events

    response: HttpResponseBase = eventstream_events(
        request, channels=[admit(request.user, channel)]
    )
    return response


def _held(request: HttpRequest, channel: str) -> HttpResponseBase:
    """The GRIP proxy's hold of ``channel``, with taskstate's close channels."""
    held = _stream(request, channel)
    streams.add_close_channels(request)
    return held


#: How long a client told that the server cannot stream waits before asking again
#: (milliseconds; the SSE "retry" field, for clients other than taskstate.js, which backs
#: off on its own).
CANNOT_STREAM_RETRY_MS = 300_000

_cannot_stream_logged = False


def _cannot_stream(request: HttpRequest) -> HttpResponseBase:
    # WSGI (runserver, gunicorn) cannot stream: the response would hold a thread and never
    # send a byte. Say so in the stream and, once per process, in the log, and end it.
    global _cannot_stream_logged
    from django_eventstream.utils import sse_encode_error

    text = (
        "The task stream needs an ASGI server (uvicorn, daphne) or a GRIP proxy; "
        "this request was served over WSGI (runserver, gunicorn), which cannot stream."
    )
    if not _cannot_stream_logged:
        _cannot_stream_logged = True
        logger.error("%s Path: %s (said once per process)", text, request.path)
    event = sse_encode_error("stream-unavailable", text).rstrip("\n")
    return HttpResponse(
        f"{event}\nretry: {CANNOT_STREAM_RETRY_MS}\n\n", content_type="text/event-stream"
    )


def _release_connections() -> None:
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


@require_GET
@vary_on_headers("HX-Request")
def task_list(request: HttpRequest) -> HttpResponse:
    """The user's task list: the rows alone for htmx (a resync), else the whole list."""
    tasks, more = (
        Task.objects.for_user(request.user).for_display().first_rows(get_settings().LIST_MAX_ROWS)
    )
    context = {
        "tasks": tasks,
        "more": more,
        "show_traceback": bool(getattr(request.user, "is_staff", False)),
        "notify": get_settings().NOTIFY_WHEN_HIDDEN,
    }
    if getattr(request, "htmx", False):
        return render(request, "taskstate/_task_rows.html", context)
    return render(request, "taskstate/task_list.html", context)


@require_GET
@login_required
@vary_on_headers("HX-Request")
def children(request: HttpRequest, pk: int) -> HttpResponse:
    """The children of a group or pipeline the user may see (their own, or one about an
    object the policy lets them see), in order; 404 for any other.

    The rows alone for htmx (the expanded group row), else a page of their own.
    """
    try:
        group = visible_task(request.user, pk)
    except Refused as refused:
        return _refusal(refused)
    if not group.is_group:
        raise Http404("No such group.")
    rows = Task.objects.filter(parent_id=group.pk).order_by("position", "pk")
    children, more = rows.first_rows(get_settings().LIST_MAX_ROWS)
    context = {"group": group, "children": children, "more": more}
    if getattr(request, "htmx", False):
        return render(request, "taskstate/_children.html", context)
    return render(request, "taskstate/task_children.html", context)


@require_POST
@login_required
def seen(request: HttpRequest, pk: int) -> HttpResponse:
    """Mark one of the user's completed tasks seen; 404 for anyone else's.

    A group or pipeline is dismissed with its children.
    """
    task = get_object_or_404(Task.objects.for_user(request.user).completed(), pk=pk)
    if Task.objects.filter(pk=task.pk).mark_seen():
        publish_removed_on_commit([task])
    return _done(request)


@require_POST
@login_required
def seen_all(request: HttpRequest) -> HttpResponse:
    """Mark all of the user's completed, unseen tasks seen."""
    mine = finished_unseen(request.user)
    if mine and Task.objects.filter(pk__in=[task.pk for task in mine]).mark_seen():
        publish_removed_on_commit(mine)
    return _done(request)


def finished_unseen(user: AbstractBaseUser | AnonymousUser) -> list[Task]:
    """The user's finished tasks not dismissed yet, with what tells their pages."""
    mine = Task.objects.for_user(user).completed().top_level().filter(seen=False)
    return list(mine.only("pk", "user_id", "object_type", "object_pk"))


@require_POST
@login_required
def cancel(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask to cancel one of the user's active tasks; 404 for anyone else's.

    The row (``cancelled``, or "Cancelling" while its actor runs) is pushed to every page
    of the user; htmx swaps in the same row at once. A child of a group or pipeline: 409,
    it is cancelled with its group.
    """
    task = _controlled(request, pk, CANCEL)
    if isinstance(task, HttpResponse):
        return task
    written = control.cancel(task) or task
    return _row_or_back(request, written)


@require_POST
@login_required
def retry(request: HttpRequest, pk: int) -> HttpResponse:
    """Send one of the user's failed or cancelled retryable tasks again; 404 otherwise.

    The old row is dismissed; the new task's row arrives like any other. A child of a
    group or pipeline: 409, it is retried with its group.
    """
    task = _controlled(request, pk, RETRY)
    if isinstance(task, HttpResponse):
        return task
    try:
        control.retry(task)
    except control.RetryRefused as exc:
        raise Http404(str(exc)) from exc
    publish_removed_on_commit([task])
    return _done(request)


def _controlled(request: HttpRequest, pk: int, action: str) -> Task | HttpResponse:
    # The rule of taskstate.web.access: 404 for a task the user may not see (or their own the
    # policy refuses), 409 for a child of a group, 403 through an object.
    try:
        return controlled_task(request.user, pk, action)
    except Refused as refused:
        return _refusal(refused)


def _refusal(refused: Refused) -> HttpResponse:
    if refused.status == 404:
        raise Http404(refused.message)
    return HttpResponse(
        refused.message, status=refused.status, content_type="text/plain; charset=utf-8"
    )


def _row_or_back(request: HttpRequest, task: Task) -> HttpResponse:
    if getattr(request, "htmx", False):
        return render(request, "taskstate/_task_row.html", {"task": task})
    return HttpResponseRedirect(_back_url(request))


def publish_removed_on_commit(tasks: list[Task]) -> None:
    """Once the dismissal is committed, take ``tasks`` off every page of their owners and
    of their objects (``taskstate.web.publish.publish_removed_tasks``)."""
    transaction.on_commit(lambda: publish_removed_tasks(tasks), robust=True)


def _done(request: HttpRequest) -> HttpResponse:
    # htmx removes the row itself (hx-swap="delete" needs a 200, not a 204); a plain
    # form post goes back where it came from.
    if getattr(request, "htmx", False):
        return HttpResponse("")
    return HttpResponseRedirect(_back_url(request))


def _back_url(request: HttpRequest) -> str:
    for candidate in (request.POST.get("next"), request.META.get("HTTP_REFERER")):
        if candidate and url_has_allowed_host_and_scheme(
            candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return candidate
    return str(resolve_url("taskstate:list"))


# --- the tasks about an object ----------------------------------------------------------


def _object_or_refusal(request: HttpRequest, token: str) -> tuple[str, str] | HttpResponse:
    """The object a signed ``token`` names, when the policy lets the user see its tasks;
    else 404 (not a token of this site) or 403 (``taskstate.web.access.seen_object``)."""
    try:
        return seen_object(request.user, token)
    except Refused as refused:
        return _refusal(refused)


@require_GET
@transaction.non_atomic_requests
def object_events(request: HttpRequest, token: str, form: str = "html") -> HttpResponseBase:
    """The SSE stream of the tasks about one object, for a user the policy lets see it.

    ``form="json"`` (``taskstate:json-object-events``): the object's JSON channel
    (``taskstate.web.channels.object_json_channel``), under every same rule.

    The rules of :func:`events`: the channel comes from the signed token in the path, never
    from a query parameter; the session, the per-user cap (these streams count in it) and
    the end with the session apply; and the stream also ends at the same periodic check
    once the policy no longer lets its user see the object.

    Behind a GRIP proxy (Pushpin) the proxy holds the stream, closed at once on logout and
    deactivation as a user's stream is. Its refresh must name this object's channel, and
    is refused (403) once the policy no longer lets the user see the object: Pushpin
    refreshes a held stream every 120 s (its default; django-eventstream's next link sets
    no timeout), so such a user stops receiving within 120 s, and Pushpin closes the
    stream after its retries.
    """
    refused = streams.refuse_unsigned_grip_parameters(request)
    if refused is not None:
        return refused
    refreshing = streams.grip_signed(request) and "es-meta" in request.GET
    if refreshing:
        named = object_of_token(token)
        if named is None:
            raise Http404("No such object.")
        refused = streams.check_refresh(request, _object_channel(named, form))
        if refused is not None:
            return refused
    about = _object_or_refusal(request, token)
    if isinstance(about, HttpResponse):
        return about
    channel = _object_channel(about, form)
    if streams.grip_signed(request):
        if not refreshing:
            streams.add_session_reference(request)
        return _held(request, channel)
    if "wsgi.version" in request.META:
        return _cannot_stream(request)
    session = getattr(request, "session", None)
    user_pk = request.user.pk
    stream = streams.registry.admit(
        user_pk,
        getattr(session, "session_key", None),
        still_allowed=functools.partial(still_sees_object, user_pk, *about),
    )
    if stream is None:
        return streams.too_many_streams()
    response = _stream(request, channel)
    if isinstance(response, StreamingHttpResponse):
        streams.guard(response, stream)
    else:
        streams.registry.remove(stream)
    _release_connections()
    return response


def _object_channel(about: tuple[str, str], form: str) -> str:
    """The object's channel of ``form``."""
    html, as_json = object_channels(*about)
    return as_json if form == "json" else html


@require_GET
@vary_on_headers("HX-Request")
def object_task_list(request: HttpRequest, token: str) -> HttpResponse:
    """The tasks about one object: the rows alone for htmx (a resync, or the object's
    stream said they changed), else the whole list. 403 for a user the policy does not
    let see them."""
    about = _object_or_refusal(request, token)
    if isinstance(about, HttpResponse):
        return about
    context = object_list_context(request, token, *about)
    if getattr(request, "htmx", False):
        return render(request, "taskstate/_task_rows.html", context)
    return render(request, "taskstate/object_task_list.html", {**context, "visible": True})


def object_list_context(
    request: HttpRequest, token: str, object_type: str, object_pk: str
) -> dict[str, object]:
    """What ``taskstate/object_task_list.html`` shows, the policy's check done."""
    tasks, more = (
        Task.objects.about(object_type, object_pk)
        .for_display()
        .first_rows(get_settings().LIST_MAX_ROWS)
    )
    share_object_reads(tasks)
    return {
        "tasks": tasks,
        "more": more,
        "object_token": token,
        "show_traceback": bool(getattr(request.user, "is_staff", False)),
    }
