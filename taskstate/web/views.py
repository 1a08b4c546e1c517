"""Thin views: the event streams, the lists, marking tasks seen, cancel and retry."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from django.contrib.auth.decorators import login_required
from django.db import transaction
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
from taskstate.core.threads import close_idle_connections
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
T = TypeVar("T")


@require_GET
@transaction.non_atomic_requests
def events(request: HttpRequest, form: str = "html") -> HttpResponseBase:
    """The SSE stream of the logged-in user's own channel (``form="json"``: its JSON form).

    The channel comes from the session, never from the request. Behind a GRIP proxy the
    proxy's signed refresh of a held stream is served only while the session it was
    opened with is valid (``taskstate.web.streams``); a stream served here ends with its
    session. The only door to a taskstate channel (``taskstate.web.channels.admit``).
    """
    if (refused := streams.refuse_unsigned_grip_parameters(request)) is not None:
        return refused
    refreshing = streams.grip_signed(request) and "es-meta" in request.GET
    if refreshing:
        if (refused := streams.check_refresh(request)) is not None:
            return refused
    elif not request.user.is_authenticated:
        return HttpResponseForbidden("Log in to follow your tasks.")
    channel = json_channel(request.user.pk) if form == "json" else user_channel(request.user.pk)
    return _serve(request, channel, refreshing)


def _serve(
    request: HttpRequest,
    channel: str,
    refreshing: bool,
    still_allowed: Callable[[], bool] | None = None,
) -> HttpResponseBase:
    """Hand the request, its checks done, to django-eventstream: held by the GRIP proxy
    with taskstate's close channels, or streamed here under the per-user cap."""
    if streams.grip_signed(request):
        if not refreshing:
            streams.add_session_reference(request)
        held = _stream(request, channel)
        streams.add_close_channels(request)
        return held
    if "wsgi.version" in request.META:
        return _cannot_stream(request)
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    stream = streams.registry.admit(request.user.pk, session_key, still_allowed)
    if stream is None:
        return streams.too_many_streams()
    response = _stream(request, channel)
    if isinstance(response, StreamingHttpResponse):
        streams.guard(response, stream)
    else:
        streams.registry.remove(stream)
    # Under ASGI the request's thread keeps the connection the session and user were read
    # through until the stream ends (hours); the stream reads nothing, so give it back.
    close_idle_connections()
    return response


def _stream(request: HttpRequest, channel: str) -> HttpResponseBase:
    from django_eventstream.views import events as eventstream_events

    channels = [admit(request.user, channel)]
    response: HttpResponseBase = eventstream_events(request, channels=channels)
    return response


#: The SSE "retry" (ms) told to a client the server cannot stream to (taskstate.js backs
#: off on its own).
CANNOT_STREAM_RETRY_MS = 300_000

_cannot_stream_logged = False


def _cannot_stream(request: HttpRequest) -> HttpResponseBase:
    # WSGI cannot stream: the response would hold a thread and never send a byte. Say so
    # in the stream and, once per process, in the log.
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


@require_GET
@vary_on_headers("HX-Request")
def task_list(request: HttpRequest) -> HttpResponse:
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
        return render(request, "taskstate/_task_rows.html", context)  # a resync
    return render(request, "taskstate/task_list.html", context)


@require_GET
@login_required
@vary_on_headers("HX-Request")
def children(request: HttpRequest, pk: int) -> HttpResponse:
    """The children of a group or pipeline the user may see, in order; 404 for any other."""
    group = _or_refusal(visible_task, request.user, pk)
    if isinstance(group, HttpResponse):
        return group
    if not group.is_group:
        raise Http404("No such group.")
    rows = Task.objects.filter(parent_id=group.pk).order_by("position", "pk")
    children, more = rows.first_rows(get_settings().LIST_MAX_ROWS)
    context = {"group": group, "children": children, "more": more}
    if getattr(request, "htmx", False):
        return render(request, "taskstate/_children.html", context)  # the expanded row
    return render(request, "taskstate/task_children.html", context)


@require_POST
@login_required
def seen(request: HttpRequest, pk: int) -> HttpResponse:
    """Mark one of the user's completed tasks (a group with its children) seen; 404 for
    anyone else's."""
    task = get_object_or_404(Task.objects.for_user(request.user).completed(), pk=pk)
    if Task.objects.filter(pk=task.pk).mark_seen():
        publish_removed_on_commit([task])
    return _done(request)


@require_POST
@login_required
def seen_all(request: HttpRequest) -> HttpResponse:
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
    """Ask to cancel one of the user's active tasks; 404 for anyone else's, 409 for a
    child of a group (cancelled with its group). The row goes to every page of the user."""
    task = _or_refusal(controlled_task, request.user, pk, CANCEL)
    if isinstance(task, HttpResponse):
        return task
    written = control.cancel(task) or task
    if getattr(request, "htmx", False):
        return render(request, "taskstate/_task_row.html", {"task": written})
    return HttpResponseRedirect(_back_url(request))


@require_POST
@login_required
def retry(request: HttpRequest, pk: int) -> HttpResponse:
    """Send one of the user's failed or cancelled retryable tasks again and dismiss the old
    row; 404 otherwise, 409 for a child of a group (retried with its group)."""
    task = _or_refusal(controlled_task, request.user, pk, RETRY)
    if isinstance(task, HttpResponse):
        return task
    try:
        control.retry(task)
    except control.RetryRefused as exc:
        raise Http404(str(exc)) from exc
    publish_removed_on_commit([task])
    return _done(request)


def _or_refusal(check: Callable[..., T], *args: Any) -> T | HttpResponse:
    """What ``check`` (a rule of ``taskstate.web.access``) returns, or its refusal: 404
    raised, any other status returned."""
    try:
        return check(*args)
    except Refused as refused:
        if refused.status == 404:
            raise Http404(refused.message) from refused
        return HttpResponse(
            refused.message, status=refused.status, content_type="text/plain; charset=utf-8"
        )


def publish_removed_on_commit(tasks: list[Task]) -> None:
    """Once the dismissal is committed, take ``tasks`` off every page of their owners and
    of their objects."""
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


@require_GET
@transaction.non_atomic_requests
def object_events(request: HttpRequest, token: str, form: str = "html") -> HttpResponseBase:
    """The SSE stream of the tasks about one object (``form="json"``: its JSON form), for a
    user the policy lets see it, under every rule of :func:`events`.

    The channel comes from the signed token in the path. A stream served here also ends
    at the session check once the policy no longer lets its user see the object; under
    GRIP the refresh must name this object's channel and is refused (403) then.
    """
    if (refused := streams.refuse_unsigned_grip_parameters(request)) is not None:
        return refused
    refreshing = streams.grip_signed(request) and "es-meta" in request.GET
    if refreshing:
        if (named := object_of_token(token)) is None:
            raise Http404("No such object.")
        if (refused := streams.check_refresh(request, _object_channel(named, form))) is not None:
            return refused
    about = _or_refusal(seen_object, request.user, token)
    if isinstance(about, HttpResponse):
        return about
    still_allowed = functools.partial(still_sees_object, request.user.pk, *about)
    return _serve(request, _object_channel(about, form), refreshing, still_allowed)


def _object_channel(about: tuple[str, str], form: str) -> str:
    html, as_json = object_channels(*about)
    return as_json if form == "json" else html


@require_GET
@vary_on_headers("HX-Request")
def object_task_list(request: HttpRequest, token: str) -> HttpResponse:
    """The tasks about one object; 403 for a user the policy does not let see them."""
    about = _or_refusal(seen_object, request.user, token)
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
