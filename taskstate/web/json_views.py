"""The JSON endpoints: the user's task list, the tasks about an object, and cancel, retry
and dismiss answering JSON.

For pages not built with htmx (docs/how-to/json.md). The same rules as the HTML views
(``taskstate.web.access``): the session's user, their own tasks and those about objects the
policy lets them see (any other task is a 404, exactly like a task that does not exist),
CSRF on every POST, and the control policy (``TASKSTATE["CONTROL_POLICY"]``) for cancel
and retry. Anonymous requests get 403, in JSON, rather than a redirect to the login page a
script cannot follow. Every body is one of the shapes in ``taskstate.web.task_json``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.paginator import EmptyPage, Paginator
from django.http import HttpRequest, HttpResponse
from django.utils.http import urlencode
from django.utils.translation import gettext
from django.views.decorators.http import require_GET, require_POST

from taskstate.core import control
from taskstate.core.conf import get_settings
from taskstate.core.models import Task, TaskQuerySet
from taskstate.core.policy import CANCEL, RETRY, share_object_reads
from taskstate.core.states import Status
from taskstate.web.access import Refused, controlled_task, seen_object
from taskstate.web.task_json import ActionAnswer, ErrorAnswer, TaskPage, dumps, task_json
from taskstate.web.views import finished_unseen, publish_removed_on_commit

View = Callable[..., HttpResponse]


def json_response(payload: object, status: int = 200) -> HttpResponse:
    return HttpResponse(dumps(payload), status=status, content_type="application/json")


def _error(message: str, status: int) -> HttpResponse:
    return json_response(ErrorAnswer(error=message), status)


def _logged_in(view: View) -> View:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return _error(gettext("Log in to see your tasks."), 403)
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
@_logged_in
def task_list(request: HttpRequest) -> HttpResponse:
    """One page of the user's task list (``TaskPage``), the tasks the HTML list shows.

    ``?status=running&status=retrying`` (or ``status=running,retrying``) keeps those;
    ``?page=2`` for the next page of ``per_page`` tasks (``LIST_MAX_ROWS`` at most, and
    by default). An unknown status or a page past the last: 400 or 404.
    """
    return _task_page(request, Task.objects.for_user(request.user).for_display())


@require_GET
def object_task_list(request: HttpRequest, token: str) -> HttpResponse:
    """One page of the tasks about an object (``TaskPage``), the tasks its HTML list shows,
    each with the actions the requesting user may take; the query of :func:`task_list`.
    404 for a token this site did not sign, 403 for anonymous users and users the policy
    does not let see them."""
    try:
        about = seen_object(request.user, token)
    except Refused as refused:
        return _error(refused.message, refused.status)
    return _task_page(request, Task.objects.about(*about).for_display())


def _task_page(request: HttpRequest, tasks: TaskQuerySet) -> HttpResponse:
    """One page of ``tasks`` as the query string asks (status, page, per_page)."""
    statuses = [s for value in request.GET.getlist("status") for s in value.split(",") if s]
    unknown = sorted(set(statuses) - set(Status.values))
    if unknown:
        return _error(gettext("Unknown status: %s.") % ", ".join(unknown), 400)
    limit = get_settings().LIST_MAX_ROWS
    try:
        per_page = min(max(int(request.GET.get("per_page", limit)), 1), limit)
        number = int(request.GET.get("page", 1))
    except ValueError:
        return _error(gettext("page and per_page are numbers."), 400)
    if statuses:
        tasks = tasks.filter(status__in=statuses)
    paginator = Paginator(tasks, per_page, allow_empty_first_page=True)
    try:
        page = paginator.page(number)
    except EmptyPage:
        return _error(gettext("No such page."), 404)

    def link(to: int) -> str:
        query = [("status", s) for s in statuses] + [("page", to)]
        if per_page != limit:
            query.append(("per_page", per_page))
        return f"{request.path}?{urlencode(query)}"

    rows = list(page.object_list)
    share_object_reads(rows)
    answer: TaskPage = {
        "tasks": [task_json(task, request.user) for task in rows],
        "count": paginator.count,
        "page": page.number,
        "pages": paginator.num_pages,
        "next": link(page.next_page_number()) if page.has_next() else None,
        "previous": link(page.previous_page_number()) if page.has_previous() else None,
    }
    return json_response(answer)


@require_POST
@_logged_in
def seen(request: HttpRequest, pk: int) -> HttpResponse:
    """Dismiss one of the user's finished tasks (a group with its children)."""
    task = Task.objects.for_user(request.user).completed().filter(pk=pk).first()
    if task is None:
        return _error(gettext("No such task."), 404)
    marked = Task.objects.filter(pk=task.pk).mark_seen()
    # Seen already (in another tab, whose removal went out then): off this page too.
    return _answer(request, None, [task], publish=bool(marked))


@require_POST
@_logged_in
def seen_all(request: HttpRequest) -> HttpResponse:
    """Dismiss all of the user's finished tasks."""
    mine = finished_unseen(request.user)
    marked = bool(mine) and bool(Task.objects.filter(pk__in=[t.pk for t in mine]).mark_seen())
    return _answer(request, None, mine if marked else [])


@require_POST
@_logged_in
def cancel(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask to cancel one of the user's active tasks, or one about an object the policy lets
    them change; the answer carries its row."""
    task = _controlled(request, pk, CANCEL)
    if isinstance(task, HttpResponse):
        return task
    written = control.cancel(task) or task
    return _answer(request, written, [])


@require_POST
@_logged_in
def retry(request: HttpRequest, pk: int) -> HttpResponse:
    """Send one of the user's failed or cancelled retryable tasks (or one about an object
    the policy lets them change) again; the old row goes, the new task's row arrives on the
    stream like any other."""
    task = _controlled(request, pk, RETRY)
    if isinstance(task, HttpResponse):
        return task
    try:
        control.retry(task)
    except control.RetryRefused as exc:
        return _error(str(exc), 404)
    return _answer(request, None, [task])


def _controlled(request: HttpRequest, pk: int, action: str) -> Task | HttpResponse:
    # The HTML views' rule (taskstate.web.access), answered in JSON.
    try:
        return controlled_task(request.user, pk, action)
    except Refused as refused:
        return _error(refused.message, refused.status)


def _answer(
    request: HttpRequest, task: Task | None, removed: list[Task], *, publish: bool = True
) -> HttpResponse:
    """The answer to an action; ``removed``: the tasks it took off the list, told to every
    page of their owners and objects once committed (``publish``)."""
    if removed and publish:
        publish_removed_on_commit(removed)
    answer: ActionAnswer = {
        "task": task_json(task, request.user) if task is not None else None,
        "removed": [task.pk for task in removed],
    }
    return json_response(answer)
