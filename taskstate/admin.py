from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from taskstate.models import Task
from taskstate.templatetags.taskstate import taskstate_duration

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
    )
    list_select_related = ("user",)
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    actions = ("mark_seen", "delete_completed")
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
                )
            },
        ),
        (
            _("Message"),
            {"fields": ("message_id", "actor_name", "queue_name", "app_name", "model_name")},
        ),
        (_("Outcome"), {"fields": ("result", "error_type", "error_message", "traceback")}),
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

    @admin.display(description=_("task"), ordering="description")
    def description_or_actor(self, task: Task) -> str:
        return task.description or task.actor_name

    @admin.display(description=_("progress"), ordering="progress")
    def progress_bar(self, task: Task) -> str:
        return format_html(
            '<progress max="100" value="{}" title="{} %"></progress> {} %',
            task.progress,
            task.progress,
            task.progress,
        )

    @admin.display(description=_("duration"))
    def duration_display(self, task: Task) -> str:
        return taskstate_duration(task.duration) or "-"

    @admin.action(description=_("Mark selected completed tasks seen"), permissions=("view",))
    def mark_seen(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        count = queryset.mark_seen()  # type: ignore[attr-defined]
        self.message_user(
            request,
            ngettext("%d task marked seen.", "%d tasks marked seen.", count) % count,
            messages.SUCCESS,
        )

    @admin.action(description=_("Delete selected completed tasks"), permissions=("delete",))
    def delete_completed(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        count, _ = queryset.completed().delete()  # type: ignore[attr-defined]
        self.message_user(
            request,
            ngettext("%d completed task deleted.", "%d completed tasks deleted.", count) % count,
            messages.SUCCESS,
        )
