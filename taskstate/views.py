"""Thin views: the event stream, the list partial, marking tasks seen, cancel and retry."""

from __future__ import annotations

import logging

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

from taskstate import control, streams
from taskstate.channels import user_channel
from taskstate.conf import get_settings
from taskstate.models import Task
from taskstate.policy import CANCEL, RETRY, allowed
from taskstate.publish import publish_removed

logger = logging.getLogger("taskstate")


@require_GET
@transaction.non_atomic_requests
def events(request: HttpRequest) -> HttpResponseBase:
    """The SSE stream of the logged-in user's own channel, and no other.

    The channel comes from the session, never from the request: query parameters
    such as ``channel`` are ignored. One exception: behind a GRIP proxy (Pushpin), the
    proxy refreshes each held stream through the "next" link django-eventstream gave it,
    without the browser's cookies; that request must carry the proxy's verified
    signature, and the session the stream was opened with must still be valid
    (``taskstate.streams``). A stream served here ends when its session does.
    """
    from django_eventstream.views import events as eventstream_events

    refused = streams.refuse_unsigned_grip_parameters(request)
    if refused is not None:
        return refused
    if streams.grip_signed(request) and "es-meta" in request.GET:
        refused = streams.check_refresh(request)
        if refused is not None:
            return refused
        refreshed: HttpResponseBase = eventstream_events(request)
        streams.add_close_channels(request)
        return refreshed
    if not request.user.is_authenticated:
        return HttpResponseForbidden("Log in to follow your tasks.")
    if "wsgi.version" in request.META and not streams.grip_signed(request):
        return _cannot_stream(request)
    if streams.grip_signed(request):
        streams.add_session_reference(request)
        held: HttpResponseBase = eventstream_events(
            request, channels=[user_channel(request.user.pk)]
        )
        streams.add_close_channels(request)
        return held
    session = getattr(request, "session", None)
    stream = streams.registry.admit(request.user.pk, getattr(session, "session_key", None))
    if stream is None:
        return streams.too_many_streams()
    response: HttpResponseBase = eventstream_events(
        request, channels=[user_channel(request.user.pk)]
    )
    if isinstance(response, StreamingHttpResponse):
        streams.guard(response, stream)
    else:
        streams.registry.remove(stream)
    # Under ASGI this request keeps its own thread, and with it the database connection
    # the session and user were read through, until the stream ends: one connection per
    # open page, for hours. The stream itself reads nothing, so give the connection back.
    _release_connections()
    return response


def _cannot_stream(request: HttpRequest) -> HttpResponseBase:
    # WSGI (runserver, gunicorn) cannot stream: the response would hold a thread and never
    # send a byte. Say so in the stream and in the log, and end it.
    from django_eventstream.utils import sse_error_response

    text = (
        "The task stream needs an ASGI server (uvicorn, daphne) or a GRIP proxy; "
        "this request was served over WSGI (runserver, gunicorn), which cannot stream."
    )
    logger.error("%s Path: %s", text, request.path)
    refused: HttpResponseBase = sse_error_response("stream-unavailable", text)
    return refused


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
    """The children of one of the user's groups or pipelines, in order; 404 for others'.

    The rows alone for htmx (the expanded group row), else a page of their own.
    """
    group = get_object_or_404(Task.objects.for_user(request.user).exclude(kind=""), pk=pk)
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
        _publish_removed_on_commit(request.user.pk, [task.pk])
    return _done(request)


@require_POST
@login_required
def seen_all(request: HttpRequest) -> HttpResponse:
    """Mark all of the user's completed, unseen tasks seen."""
    mine = Task.objects.for_user(request.user).completed().top_level().filter(seen=False)
    pks = list(mine.values_list("pk", flat=True))
    if pks and Task.objects.filter(pk__in=pks).mark_seen():
        _publish_removed_on_commit(request.user.pk, pks)
    return _done(request)


@require_POST
@login_required
def cancel(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask to cancel one of the user's active tasks; 404 for anyone else's.

    The row (``cancelled``, or "Cancelling" while its actor runs) is pushed to every page
    of the user; htmx swaps in the same row at once.
    """
    task = _controlled(request, pk, CANCEL)
    written = control.cancel(task) or task
    return _row_or_back(request, written)


@require_POST
@login_required
def retry(request: HttpRequest, pk: int) -> HttpResponse:
    """Send one of the user's failed or cancelled retryable tasks again; 404 otherwise.

    The old row is dismissed; the new task's row arrives like any other.
    """
    task = _controlled(request, pk, RETRY)
    try:
        control.retry(task)
    except control.RetryRefused as exc:
        raise Http404(str(exc)) from exc
    _publish_removed_on_commit(request.user.pk, [task.pk])
    return _done(request)


def _controlled(request: HttpRequest, pk: int, action: str) -> Task:
    # Someone else's task, or one the policy refuses, looks the same as no task at all.
    task = get_object_or_404(Task.objects.for_user(request.user), pk=pk)
    if not allowed(request.user, task, action):
        raise Http404("Not allowed.")
    return task


def _row_or_back(request: HttpRequest, task: Task) -> HttpResponse:
    if getattr(request, "htmx", False):
        return render(request, "taskstate/_task_row.html", {"task": task})
    return HttpResponseRedirect(_back_url(request))


def _publish_removed_on_commit(user_pk: object, pks: list[int]) -> None:
    transaction.on_commit(lambda: publish_removed(user_pk, pks), robust=True)


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
