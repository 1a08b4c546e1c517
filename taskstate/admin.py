from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from taskstate.core import control
from taskstate.core.models import Task
from taskstate.core.policy import CANCEL, RETRY, allowed, controlled_by_group
from taskstate.templatetags.taskstate import taskstate_duration
from taskstate.web.views import publish_removed_on_commit

if TYPE_CHECKING:
    _TaskAdminBase = admin.ModelAdmin[Task]
else:
    _TaskAdminBase = admin.ModelAdmin


@admin.register(Task)
class TaskAdmin(_TaskAdminBase):
    list_display = (
        "description_or_actor",
        "status",
        "user",
        "actor_name",
        "progress_bar",
        "attempts",
        "created_at",
        "duration_display",
        "seen",
    )
    list_filter = ("status", "kind", "seen", "queue_name", "actor_name", "created_at")
    search_fields = (
        "description",
        "actor_name",
        "message_id",
        "user__username",
        "error_message",
        "app_name",
        "model_name",
        "=object_pk",
    )
    list_select_related = ("user",)
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    actions = ("mark_seen", "delete_completed", "cancel_tasks", "retry_tasks")
    readonly_fields = [f.name for f in Task._meta.fields] + ["duration_display"]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "description",
                    "status",
                    "user",
                    "progress",
                    "progress_message",
                    "attempts",
                    "seen",
                    "seen_at",
                    "cancel_requested_at",
                    "retry_of",
                )
            },
        ),
        (
            _("Message"),
            {
                "fields": (
                    "message_id",
                    "actor_name",
                    "queue_name",
                    "app_name",
                    "model_name",
                    "object_type",
                    "object_pk",
                )
            },
        ),
        (_("Outcome"), {"fields": ("result", "error_type", "error_message", "traceback")}),
        (_("Retry"), {"fields": ("retry_message",), "classes": ("collapse",)}),
        (
            _("Times"),
            {
                "fields": (
                    "created_at",
                    "started_at",
                    "finished_at",
                    "updated_at",
                    "duration_display",
                )
            },
        ),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_control_permission(self, request: HttpRequest) -> bool:
        """The actions that act on a task (mark seen starts its deletion clock, cancel,
        retry): the change permission, which ``has_change_permission`` cannot carry as it
        keeps the change form read-only for all."""
        return request.user.has_perm("taskstate.change_task")

    @admin.display(description=_("task"), ordering="description")
    def description_or_actor(self, task: Task) -> str:
        return task.description or task.actor_name

    @admin.display(description=_("progress"), ordering="progress")
    def progress_bar(self, task: Task) -> str:
        return format_html(
            '<progress max="100" value="{p}" title="{p} %"></progress> {p} %', p=task.progress
        )

    @admin.display(description=_("duration"))
    def duration_display(self, task: Task) -> str:
        return taskstate_duration(task.duration) or "-"

    @admin.action(description=_("Mark selected completed tasks seen"), permissions=("control",))
    def mark_seen(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        unseen = _removable(queryset.completed().filter(seen=False))  # type: ignore[attr-defined]
        count = Task.objects.filter(pk__in=[t.pk for t in unseen]).mark_seen() if unseen else 0
        publish_removed_on_commit(unseen)  # as the dismiss button does
        self.message_user(
            request,
            ngettext("%d task marked seen.", "%d tasks marked seen.", count) % count,
            messages.SUCCESS,
        )

    @admin.action(description=_("Delete selected completed tasks"), permissions=("delete",))
    def delete_completed(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        completed = _removable(queryset.completed().order_by("pk"))  # type: ignore[attr-defined]
        count, _ = Task.objects.filter(pk__in=[t.pk for t in completed]).delete()
        publish_removed_on_commit(completed)
        self.message_user(
            request,
            ngettext("%d completed task deleted.", "%d completed tasks deleted.", count) % count,
            messages.SUCCESS,
        )

    @admin.action(description=_("Cancel selected tasks"), permissions=("control",))
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        """Cancel each selected task the policy allows; a group's children go with it."""
        tasks, in_groups = _outside_groups(queryset)
        count = sum(
            1
            for task in tasks
            if allowed(request.user, task, CANCEL) and control.cancel(task) is not None
        )
        self.message_user(
            request,
            ngettext("%d task asked to cancel.", "%d tasks asked to cancel.", count) % count,
            messages.SUCCESS,
        )
        if in_groups:
            self.message_user(
                request,
                ngettext(
                    "%d task of a group or pipeline left alone: it is cancelled with its group.",
                    "%d tasks of a group or pipeline left alone: they are cancelled with "
                    "their group.",
                    in_groups,
                )
                % in_groups,
                messages.WARNING,
            )

    @admin.action(description=_("Retry selected tasks"), permissions=("control",))
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        """Retry each selected task the policy allows; a selected child of a group is not
        sent on its own (its group's retry sends it)."""
        tasks, in_groups = _outside_groups(queryset)
        count = 0
        for task in tasks:
            if allowed(request.user, task, RETRY):
                with suppress(control.RetryRefused):
                    control.retry(task)
                    count += 1
        self.message_user(
            request,
            ngettext("%d task sent again.", "%d tasks sent again.", count) % count,
            messages.SUCCESS,
        )
        if in_groups:
            self.message_user(
                request,
                ngettext(
                    "%d task of a group or pipeline left alone: it is retried with its group.",
                    "%d tasks of a group or pipeline left alone: they are retried with "
                    "their group.",
                    in_groups,
                )
                % in_groups,
                messages.WARNING,
            )


def _outside_groups(queryset: QuerySet[Task]) -> tuple[list[Task], int]:
    """The selected tasks that are no group's children, and how many children were."""
    tasks = list(queryset)
    own = [task for task in tasks if not controlled_by_group(task)]
    return own, len(tasks) - len(own)


def _removable(queryset: QuerySet[Task]) -> list[Task]:
    """The selected tasks with what tells the pages showing them."""
    return list(queryset.only("pk", "user_id", "object_type", "object_pk"))
