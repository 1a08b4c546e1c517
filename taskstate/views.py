"""Thin views: the event stream, the list partial, and marking tasks seen."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connections, transaction
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseForbidden,
    HttpResponseRedirect,
)
from django.shortcuts import get_object_or_404, render, resolve_url
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers

from taskstate.channels import user_channel
from taskstate.conf import get_settings
from taskstate.models import Task
from taskstate.publish import publish_removed


@require_GET
@transaction.non_atomic_requests
def events(request: HttpRequest) -> HttpResponseBase:
    """The SSE stream of the logged-in user's own channel, and no other.

    The channel comes from the session, never from the request: query parameters
    such as ``channel`` are ignored. One exception: behind a GRIP proxy (Pushpin), the
    proxy refreshes each held stream through the "next" link django-eventstream gave it,
    without the browser's cookies; that request carries the proxy's verified signature
    and django-eventstream's own signed token naming the user and channels.
    """
    from django_eventstream.views import events as eventstream_events

    grip = getattr(request, "grip", None)
    if grip is not None and grip.proxied and "es-meta" in request.GET:
        refreshed: HttpResponseBase = eventstream_events(request)
        return refreshed
    if not request.user.is_authenticated:
        return HttpResponseForbidden("Log in to follow your tasks.")
    if "wsgi.version" in request.META and not (grip is not None and grip.proxied):
        # WSGI (runserver, gunicorn) cannot stream: the response would hold a thread and
        # never send a byte. Say so in the stream and in the log, and end it.
        import logging

        from django_eventstream.utils import sse_error_response

        text = (
            "The task stream needs an ASGI server (uvicorn, daphne) or a GRIP proxy; "
            "this request was served over WSGI (runserver, gunicorn), which cannot stream."
        )
        logging.getLogger("taskstate").error("%s Path: %s", text, request.path)
        refused: HttpResponseBase = sse_error_response("stream-unavailable", text)
        return refused
    response: HttpResponseBase = eventstream_events(
        request, channels=[user_channel(request.user.pk)]
    )
    # Under ASGI this request keeps its own thread, and with it the database connection
    # the session and user were read through, until the stream ends: one connection per
    # open page, for hours. The stream itself reads nothing, so give the connection back.
    _release_connections()
    return response


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
    context = {"tasks": tasks, "more": more}
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
