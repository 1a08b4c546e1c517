"""``{% taskstate_list %}`` and ``{% taskstate_scripts %}``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import template
from django.conf import settings
from django.db import models
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timesince import timesince
from django.utils.translation import gettext, pgettext

from taskstate.core.conf import get_settings
from taskstate.core.diagnostics import EVENT_BUS_ID, event_bus_problem
from taskstate.core.estimates import estimator
from taskstate.core.for_state import object_reference
from taskstate.core.models import Task
from taskstate.core.policy import allowed, may_dismiss, may_see_object
from taskstate.web.channels import object_token
from taskstate.web.task_json import iso, result_url

register = template.Library()

_SCRIPTS = (
    "taskstate/vendor/htmx.min.js",
    "taskstate/vendor/hx-sse.js",
    "taskstate/vendor/hx-upsert.js",
    "taskstate/taskstate.js",
)


@register.simple_tag(takes_context=True)
def taskstate_list(context: template.Context, **options: Any) -> SafeString:
    """The live task list of ``request.user``: at most ``LIST_MAX_ROWS`` rows (one query),
    then "and N more" (one count). ``for=order``: the tasks about ``order`` instead, for a
    user the policy lets see them; nothing for anyone else.
    """
    unknown = set(options) - {"for"}
    if unknown:
        raise template.TemplateSyntaxError(
            f"taskstate_list takes no option {', '.join(sorted(unknown))}; it knows for=<object>."
        )
    if "for" in options:
        return _render(
            context, "taskstate/object_task_list.html", _object_list(context, options["for"])
        )
    return _render(context, "taskstate/task_list.html", _own_list(context))


def _render(context: template.Context, name: str, data: dict[str, Any]) -> SafeString:
    # As an inclusion tag renders: the page's engine, a new context of the tag's own.
    engine = (
        context.template.engine if context.template is not None else template.Engine.get_default()
    )
    return SafeString(engine.get_template(name).render(context.new(data)))


def _object_list(context: template.Context, obj: Any) -> dict[str, Any]:
    from taskstate.web.views import object_list_context

    request = context.get("request")
    user = getattr(request, "user", None)
    data: dict[str, Any] = {"request": request, "user": user, "visible": False}
    about = _seen_object(obj, user, "taskstate_list")
    if about is None or request is None:
        return data
    return {
        **data,
        **object_list_context(request, object_token(*about), *about),
        "visible": True,
        "object": obj,
        "csrf_token": context.get("csrf_token"),
        "notify": get_settings().NOTIFY_WHEN_HIDDEN,
    }


def _seen_object(obj: Any, user: Any, tag: str) -> tuple[str, str] | None:
    """``(object_type, object_pk)`` of a saved ``obj`` whose tasks the policy lets ``user``
    see; else None."""
    if not isinstance(obj, models.Model) or obj.pk is None or user is None:
        return None
    reference = object_reference(obj, tag)
    if reference is None or not may_see_object(user, reference["model"], reference["pk"], obj):
        return None
    return reference["model"], reference["pk"]


@register.simple_tag(takes_context=True)
def taskstate_object_json_urls(context: template.Context, obj: Any) -> dict[str, str]:
    """The JSON URLs of the tasks about ``obj`` for a page not built with htmx:
    ``{% taskstate_object_json_urls order as urls %}`` gives ``urls.list``
    (``taskstate:json-object-list``) and ``urls.events`` (``taskstate:json-object-events``)
    to a user the policy lets see them; an empty dict to anyone else."""
    user = getattr(context.get("request"), "user", None)
    about = _seen_object(obj, user, "taskstate_object_json_urls")
    if about is None:
        return {}
    token = object_token(*about)
    return {
        "list": reverse("taskstate:json-object-list", args=[token]),
        "events": reverse("taskstate:json-object-events", args=[token]),
    }


def _own_list(context: template.Context) -> dict[str, Any]:
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
        # In DEBUG, a stream that cannot carry a worker's events says so on the page.
        "setup_problem": event_bus_problem() if settings.DEBUG else None,
        "setup_problem_id": EVENT_BUS_ID,
    }


@register.simple_tag(takes_context=True)
def taskstate_scripts(context: template.Context, nonce: str | None = None) -> SafeString:
    """The vendored htmx 4, its SSE and upsert extensions, and the app's stylesheet.

    Plain blocking scripts, in order: with ``defer`` htmx may process the page before the
    extensions register, and the list would never connect. Each tag carries the CSP nonce:
    ``nonce``, else the template's ``csp_nonce``, else the request's (django-csp, Django 6),
    whose reading puts it in the header.
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
    minutes, secs = divmod(int(value.total_seconds()), 60)
    hours, minutes = divmod(minutes, 60)
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
        # The word taskstate.js puts there (Intl.RelativeTimeFormat, numeric "auto"), so
        # that rows drawn here and rows redrawn in the browser read alike.
        return pgettext("a time seconds ago", "now")
    return gettext("%(time)s ago") % {"time": timesince(value, depth=1)}


@register.filter
def taskstate_iso(value: datetime | None) -> str:
    """For ``<time datetime>``: ISO 8601 with the offset, also under ``USE_TZ = False``."""
    return iso(value) or ""


@register.filter
def taskstate_result_url(task: Task) -> str:
    """The ``url`` of the task's result when it is a safe link to follow, else ""."""
    return result_url(task)


@register.simple_tag(takes_context=True)
def taskstate_may(context: template.Context, task: Task, action: str) -> bool:
    """Whether the page's user may ``action`` ("cancel", "retry", "dismiss") ``task``.
    A row pushed to its owner's channel has no request: its user is the owner."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if action == "dismiss":
        return may_dismiss(user, task)
    return allowed(user, task, action, owner=user is None)


@register.simple_tag
def taskstate_time_left(task: Task) -> str:
    """``"about 2 min left"`` for a running task, or ``""`` while no estimate is meaningful
    (``taskstate.core.estimates``; no query)."""
    return estimator.describe(task)
