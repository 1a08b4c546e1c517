"""``{% taskstate_list %}`` and ``{% taskstate_scripts %}``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import template
from django.templatetags.static import static
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext

from taskstate.conf import get_settings
from taskstate.estimates import estimator
from taskstate.models import Task

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
    seconds = max(int(value.total_seconds()), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return gettext("%(h)d h %(m)d min") % {"h": hours, "m": minutes}
    if minutes:
        return gettext("%(m)d min %(s)d s") % {"m": minutes, "s": secs}
    return gettext("%(s)d s") % {"s": secs}


@register.simple_tag
def taskstate_time_left(task: Task) -> str:
    """``"about 2 min left"`` for a running task, or ``""`` while no estimate is meaningful.

    From the task's own progress rate and the recent durations of its actor in this
    process (``taskstate.estimates``); reads nothing from the database.
    """
    return estimator.describe(task)
