from __future__ import annotations

import functools
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from taskstate import control
from taskstate.models import Task
from taskstate.policy import CANCEL, RETRY, allowed
from taskstate.publish import publish_removed
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
            {"fields": ("message_id", "actor_name", "queue_name", "app_name", "model_name")},
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
        """Cancel and retry (admin actions): the change permission, which edits nothing
        here (every field is read-only) but acts on the task."""
        return request.user.has_perm("taskstate.change_task")

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

    def has_mark_seen_permission(self, request: HttpRequest) -> bool:
        """The model's change permission: marking seen starts a task's deletion clock.

        ``has_change_permission`` stays False (the change form is read-only for all), so
        the action checks the permission itself rather than through it.
        """
        opts = self.opts
        codename = get_permission_codename("change", opts)
        return bool(request.user.has_perm(f"{opts.app_label}.{codename}"))

    @admin.action(description=_("Mark selected completed tasks seen"), permissions=("mark_seen",))
    def mark_seen(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        unseen = queryset.completed().filter(seen=False)  # type: ignore[attr-defined]
        owners: dict[Any, list[int]] = defaultdict(list)
        for pk, user_pk in unseen.values_list("pk", "user_id"):
            owners[user_pk].append(pk)
        marked = [pk for pks in owners.values() for pk in pks]
        count = Task.objects.filter(pk__in=marked).mark_seen() if marked else 0
        # Like the dismiss button: every open page of each owner drops those rows.
        for user_pk, pks in owners.items():
            if user_pk is not None:
                transaction.on_commit(functools.partial(publish_removed, user_pk, pks), robust=True)
        self.message_user(
            request,
            ngettext("%d task marked seen.", "%d tasks marked seen.", count) % count,
            messages.SUCCESS,
        )

    @admin.action(description=_("Delete selected completed tasks"), permissions=("delete",))
    def delete_completed(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        completed = queryset.completed()  # type: ignore[attr-defined]
        owners: dict[Any, list[int]] = defaultdict(list)
        for pk, user_pk in completed.order_by("pk").values_list("pk", "user_id"):
            owners[user_pk].append(pk)
        count, _ = Task.objects.filter(
            pk__in=[pk for pks in owners.values() for pk in pks]
        ).delete()
        # Like the dismiss button: every open page of each owner drops those rows.
        for user_pk, pks in owners.items():
            if user_pk is not None:
                transaction.on_commit(functools.partial(publish_removed, user_pk, pks), robust=True)
        self.message_user(
            request,
            ngettext("%d completed task deleted.", "%d completed tasks deleted.", count) % count,
            messages.SUCCESS,
        )

    @admin.action(description=_("Cancel selected tasks"), permissions=("control",))
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        count = sum(
            1
            for task in queryset
            if allowed(request.user, task, CANCEL) and control.cancel(task) is not None
        )
        self.message_user(
            request,
            ngettext("%d task asked to cancel.", "%d tasks asked to cancel.", count) % count,
            messages.SUCCESS,
        )

    @admin.action(description=_("Retry selected tasks"), permissions=("control",))
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        count = 0
        for task in queryset:
            if not allowed(request.user, task, RETRY):
                continue
            try:
                control.retry(task)
            except control.RetryRefused:
                continue
            count += 1
        self.message_user(
            request,
            ngettext("%d task sent again.", "%d tasks sent again.", count) % count,
            messages.SUCCESS,
        )
