"""``{% taskstate_list %}`` and ``{% taskstate_scripts %}``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from django import template
from django.templatetags.static import static
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.utils.translation import gettext

from taskstate.conf import get_settings
from taskstate.estimates import estimator
from taskstate.models import Task
from taskstate.policy import allowed
from taskstate.states import Status

register = template.Library()

_SCRIPTS = (
    "taskstate/vendor/htmx.min.js",
    "taskstate/vendor/hx-sse.js",
    "taskstate/vendor/hx-upsert.js",
    "taskstate/taskstate.js",
)


@register.inclusion_tag("taskstate/task_list.html", takes_context=True)
def taskstate_list(context: template.Context) -> dict[str, Any]:
    """The live task list of ``request.user``, connected to its event stream.

    At most ``LIST_MAX_ROWS`` tasks (one query), then "and N more" (one count).
    """
    request = context.get("request")
    user = getattr(request, "user", None)
    tasks, more = Task.objects.for_user(user).for_display().first_rows(get_settings().LIST_MAX_ROWS)
    return {
        "request": request,
        "user": user,
        "tasks": tasks,
        "more": more,
        "csrf_token": context.get("csrf_token"),
        "show_traceback": bool(getattr(user, "is_staff", False)),
        "notify": get_settings().NOTIFY_WHEN_HIDDEN,
    }


@register.simple_tag(takes_context=True)
def taskstate_scripts(context: template.Context, nonce: str | None = None) -> SafeString:
    """The vendored htmx 4, its SSE and upsert extensions, and the app's stylesheet.

    Plain blocking scripts, in this order: with ``defer`` htmx may start processing the
    page before the extensions have registered, and the list would never connect.

    Under a Content Security Policy each tag carries a nonce: ``nonce`` when given (for
    example ``{% taskstate_scripts nonce=request.csp_nonce %}``), else the template's
    ``csp_nonce`` (Django 6's context processor), else the request's: django-csp's
    ``request.csp_nonce`` or Django 6's ``ContentSecurityPolicyMiddleware``. Reading it
    tells those middlewares to put the nonce in the header.
    """
    if nonce is None:
        nonce = context.get("csp_nonce") or _request_nonce(context.get("request"))
    nonce_attr = format_html(' nonce="{}"', nonce) if nonce else ""
    css = format_html(
        '<link rel="stylesheet" href="{}"{}>', static("taskstate/taskstate.css"), nonce_attr
    )
    scripts = format_html_join(
        "\n", '<script src="{}"{}></script>', ((static(p), nonce_attr) for p in _SCRIPTS)
    )
    return format_html("{}\n{}", css, scripts)


def _request_nonce(request: Any) -> str | None:
    if request is None:
        return None
    nonce = getattr(request, "csp_nonce", None)  # django-csp
    if nonce is None:
        try:  # Django >= 6.0
            from django.middleware.csp import get_nonce  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return None
        nonce = get_nonce(request)
    return str(nonce) if nonce is not None else None


@register.filter
def taskstate_duration(value: timedelta | None) -> str:
    """A short, human duration: "4 s", "2 min 5 s", "1 h 3 min"."""
    if value is None:
        return ""
    if value.total_seconds() < 1:
        return gettext("under 1 s")
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return gettext("%(h)d h %(m)d min") % {"h": hours, "m": minutes}
    if minutes:
        return gettext("%(m)d min %(s)d s") % {"m": minutes, "s": secs}
    return gettext("%(s)d s") % {"s": secs}


@register.filter
def taskstate_ago(value: datetime | None) -> str:
    """How long ago ``value`` was, for pages without JavaScript (taskstate.js rewrites it
    in the browser's language and time zone, and keeps it current)."""
    if value is None:
        return ""
    if timezone.now() - value < timedelta(minutes=1):
        return gettext("just now")
    return gettext("%(time)s ago") % {"time": timesince(value, depth=1)}


@register.filter
def taskstate_result_url(task: Task) -> str:
    """The ``url`` of the task's result when it is a link to follow, else "".

    Only ``http``/``https`` URLs and paths on this site: never ``javascript:``, ``data:``
    or anything a browser could run.
    """
    result = task.result
    if not isinstance(result, dict) or task.status != Status.DONE:
        return ""
    url = result.get("url")
    if not isinstance(url, str) or not url or len(url) > 2048:
        return ""
    if any(ord(c) <= 0x20 or c == "\\" or ord(c) == 0x7F for c in url):
        return ""  # browsers ignore some of these inside a scheme ("java\tscript:")
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        return url
    if not parts.scheme and not parts.netloc and not url.startswith("//"):
        return url
    return ""


@register.filter
def taskstate_meta_below(task: Task) -> bool:
    """Whether the row's time goes on its second line, not beside its name.

    A failed row has a second line anyway (its error, or a group's counts): its time sits
    there, leaving the first line to the name and the Retry and Dismiss buttons.
    """
    return task.status == Status.FAILED and bool(task.kind or task.error_message or task.error_type)


@register.simple_tag(takes_context=True)
def taskstate_may(context: template.Context, task: Task, action: str) -> bool:
    """Whether the page's user may ``action`` ("cancel", "retry") ``task``: shows a button.

    A row pushed to its owner's channel has no request: its user is the task's owner.
    """
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None:
        return allowed(None, task, action, owner=True)
    return allowed(user, task, action)


@register.simple_tag
def taskstate_time_left(task: Task) -> str:
    """``"about 2 min left"`` for a running task, or ``""`` while no estimate is meaningful.

    From the task's own progress rate and the recent durations of its actor in this
    process (``taskstate.estimates``); reads nothing from the database.
    """
    return estimator.describe(task)
