"""The ``Task`` row that follows one tracked Dramatiq message through its life."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.db.models import Exists, F, OuterRef
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from taskstate.core.conf import get_settings
from taskstate.core.states import (
    ABANDONED_ERROR,
    ACTIVE_STATUSES,
    COMPLETE_STATUSES,
    LOST_ERROR,
    NOT_RUN_ERROR,
    TERMINAL_ORDER,
    WAITING_ORDER,
    Kind,
    Status,
)

__all__ = ["ACTIVE_STATUSES", "COMPLETE_STATUSES", "Kind", "Status", "Task", "TaskQuerySet"]

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser
    from django.contrib.auth.models import AnonymousUser


class TaskQuerySet(models.QuerySet["Task"]):
    def completed(self) -> TaskQuerySet:
        """Tasks that are done, failed, skipped or cancelled."""
        return self.filter(status__in=COMPLETE_STATUSES)

    def active(self) -> TaskQuerySet:
        """Tasks that are queued, scheduled, running or waiting for a retry."""
        return self.filter(status__in=ACTIVE_STATUSES)

    def for_user(self, user: AbstractBaseUser | AnonymousUser | None) -> TaskQuerySet:
        """The tasks of ``user``; none for anonymous users."""
        if user is None or not user.is_authenticated or user.pk is None:
            return self.none()
        return self.filter(user_id=user.pk)

    def for_display(self, seconds_since_seen: int | None = None) -> TaskQuerySet:
        """Unseen tasks, and ones seen in the last ``seconds_since_seen`` (default: the
        setting DISPLAY_SECONDS_SINCE_SEEN), newest first; a group's row stands for its children."""
        if seconds_since_seen is None:
            seconds_since_seen = get_settings().DISPLAY_SECONDS_SINCE_SEEN
        since = timezone.now() - timedelta(seconds=seconds_since_seen)
        return (
            self.top_level()
            .filter(models.Q(seen=False) | models.Q(seen_at__gte=since))
            .order_by("-created_at", "-id")
        )

    def top_level(self) -> TaskQuerySet:
        """Tasks that belong to no group or pipeline, and the groups and pipelines."""
        return self.filter(parent__isnull=True)

    def about(self, object_type: str, object_pk: str) -> TaskQuerySet:
        """The tasks about one object (its model's label, its pk as text); none for no label."""
        if not object_type:
            return self.none()
        return self.filter(object_type=object_type, object_pk=object_pk)

    def first_rows(self, limit: int) -> tuple[list[Task], int]:
        """At most ``limit`` of these tasks, and how many more there are (counted only then)."""
        rows = list(self[: limit + 1])
        if len(rows) <= limit:
            return rows, 0
        return rows[:limit], self.count() - limit

    def delete_old(
        self, max_task_age: int, only_if_seen: bool = True, *, removed: Removed | None = None
    ) -> int:
        """Delete completed tasks finished (with ``only_if_seen``: seen) more than
        ``max_task_age`` seconds ago; returns how many. A group goes with its children.

        Never deleted: a task whose message may still come and must be refused
        (:func:`awaits_its_message`), and a group while a child may still get its message.
        ``removed`` is told the deleted rows a page may still show.
        """
        cutoff = timezone.now() - timedelta(seconds=max_task_age)
        age = {"seen": True, "seen_at__lt": cutoff} if only_if_seen else {"finished_at__lt": cutoff}
        old = self.completed().filter(**age)
        pending_child = Task.objects.filter(parent_id=OuterRef("pk")).filter(
            models.Q(status__in=ACTIVE_STATUSES) | awaits_its_message()
        )
        old = old.top_level().exclude(awaits_its_message()).exclude(Exists(pending_child))
        return _delete_in_batches(old, removed)

    def delete_stale(self, max_age: int = 1200, *, removed: Removed | None = None) -> int:
        """Delete tasks still queued ``max_age`` seconds after their last change: their
        message was most likely lost (if it runs after all, the worker writes the row again).

        Never deleted: a task asked to cancel (the worker that takes its message must find
        the request), a group while a child is busy, and a child on its own.
        """
        cutoff = timezone.now() - timedelta(seconds=max_age)
        busy_child = Task.objects.filter(parent_id=OuterRef("pk")).filter(
            models.Q(status__in=(Status.DELAYED, Status.RUNNING, Status.RETRYING))
            | models.Q(cancel_requested_at__isnull=False)
        )
        stale = (
            self.top_level()
            .filter(status=Status.ENQUEUED, updated_at__lt=cutoff, cancel_requested_at__isnull=True)
            .exclude(Exists(busy_child))
        )
        return _delete_in_batches(stale, removed)

    def fail_abandoned_candidates(self, max_age: int) -> TaskQuerySet:
        """Running tasks with no change for ``max_age`` seconds: their worker most likely
        died. Never a group's row: its status is its children's."""
        return self.filter(
            status=Status.RUNNING,
            kind="",
            updated_at__lt=timezone.now() - timedelta(seconds=max_age),
        )

    def fail_abandoned(self, max_age: int) -> int:
        """Mark failed (terminal: a late write cannot undo it) the running tasks with no
        change for ``max_age`` seconds. Returns how many."""
        return _fail(
            self.fail_abandoned_candidates(max_age),
            ABANDONED_ERROR,
            f"No update for {max_age} seconds while running: the worker most likely stopped. "
            "Raise TASKSTATE['RUNNING_TIMEOUT'] if your actors run longer without progress.",
        )

    def fail_overdue_candidates(self, max_overdue: int) -> TaskQuerySet:
        """Retrying or delayed tasks due more than ``max_overdue`` seconds ago: their message
        was most likely lost."""
        return self.filter(
            status__in=(Status.RETRYING, Status.DELAYED),
            due_at__lt=timezone.now() - timedelta(seconds=max_overdue),
        )

    def fail_overdue(self, max_overdue: int) -> int:
        """Mark failed (terminal: a late write cannot undo it) the retrying or delayed tasks
        overdue by ``max_overdue`` seconds. Returns how many."""
        return _fail(
            self.fail_overdue_candidates(max_overdue),
            LOST_ERROR,
            f"Still waiting {max_overdue} seconds after its message was due: the message was "
            "most likely lost (a purged queue, a broker restarted without persistence). Raise "
            "TASKSTATE['OVERDUE_AFTER'] if your queues are often that far behind.",
        )

    def mark_seen(self) -> int:
        """Mark these tasks seen (completed ones only; a group's children with it, not
        counted). Returns the number marked."""
        now = timezone.now()
        pks = list(self.completed().filter(seen=False).values_list("pk", flat=True))
        if not pks:
            return 0
        seen = {"seen": True, "seen_at": now, "updated_at": now}
        marked = Task.objects.filter(pk__in=pks, seen=False).update(**seen)
        Task.objects.filter(parent_id__in=pks, seen=False).update(**seen)
        return marked


def _fail(tasks: TaskQuerySet, error_type: str, error_message: str) -> int:
    now = timezone.now()
    return tasks.update(
        status=Status.FAILED,
        state_order=TERMINAL_ORDER,
        error_type=error_type,
        error_message=error_message,
        finished_at=now,
        updated_at=now,
    )


def awaits_its_message() -> models.Q:
    """Tasks ended without their message, which must be refused if it comes: asked to
    cancel, and cancelled before it was due or failed by the cleanup. A worker that refuses
    the message clears ``due_at``; the row then goes as any finished one (docs/reliability.md).
    """
    return models.Q(cancel_requested_at__isnull=False) & (
        models.Q(due_at__isnull=False, finished_at__lt=F("due_at"))
        | models.Q(error_type__in=(LOST_ERROR, ABANDONED_ERROR))
    )


#: Called with the deleted rows a page may still show (unsaved, only ``pk``, ``user_id``,
#: ``object_type`` and ``object_pk`` set): their owners' pages and their objects'.
Removed = Callable[[list["Task"]], None]

_DELETE_BATCH = 5_000


def _delete_in_batches(queryset: TaskQuerySet, removed: Removed | None = None) -> int:
    """Delete in primary-key batches, so a large cleanup never holds one huge lock; each
    through ``queryset`` again, so a row changed since it was read and no longer matching stays."""
    deleted = 0
    columns = ("pk", "user_id", "seen", "seen_at", "object_type", "object_pk")
    while True:
        batch = list(queryset.values_list(*columns)[:_DELETE_BATCH])
        if not batch:
            return deleted
        pks = [row[0] for row in batch]
        count, _ = queryset.filter(pk__in=pks).delete()
        deleted += count
        if removed is not None:
            kept = set(
                Task.objects.using(queryset.db).filter(pk__in=pks).values_list("pk", flat=True)
            )
            since = timezone.now() - timedelta(seconds=get_settings().DISPLAY_SECONDS_SINCE_SEEN)
            shown = [
                Task(pk=pk, user_id=user_pk, object_type=object_type, object_pk=object_pk)
                for pk, user_pk, seen, seen_at, object_type, object_pk in batch
                if pk not in kept
                and (user_pk is not None or object_type)
                and (not seen or (seen_at is not None and seen_at >= since))
            ]
            if shown:
                removed(shown)


class Task(models.Model):
    message_id = models.CharField(_("message id"), max_length=64, unique=True)
    actor_name = models.CharField(_("actor"), max_length=255)
    queue_name = models.CharField(_("queue"), max_length=255, default="default")
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.ENQUEUED
    )
    # Orders transitions so a late hook never moves a task backwards: see transitions.py.
    state_order = models.PositiveIntegerField(default=0, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="taskstate_tasks",
        # taskstate_user_seen_idx starts with user_id and serves the same lookups.
        db_index=False,
    )
    description = models.CharField(_("description"), max_length=255, blank=True)
    app_name = models.CharField(_("app name"), max_length=100, blank=True)
    model_name = models.CharField(_("model name"), max_length=100, blank=True)
    progress = models.PositiveSmallIntegerField(_("progress"), default=0)
    progress_message = models.CharField(_("progress message"), max_length=255, blank=True)
    result = models.JSONField(_("result"), null=True, blank=True)
    error_type = models.CharField(_("error type"), max_length=255, blank=True)
    error_message = models.TextField(_("error message"), blank=True)
    traceback = models.TextField(_("traceback"), blank=True)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    seen = models.BooleanField(_("seen"), default=False)
    seen_at = models.DateTimeField(_("seen at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    # The current attempt's start (started_at stays the first's): time left counts from it.
    attempt_started_at = models.DateTimeField(_("attempt started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    # A delayed message's eta, or a retrying task's next attempt (the cleanup's OVERDUE_AFTER).
    due_at = models.DateTimeField(_("due"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated"), default=timezone.now)
    # The sender's language: pushed rows are rendered in it (no request there). "": the site's.
    language = models.CharField(_("language"), max_length=16, blank=True, default="")
    # Owner control: a cancel request; what a retry sends again; the task this one retries.
    cancel_requested_at = models.DateTimeField(_("cancel requested"), null=True, blank=True)
    retry_message = models.JSONField(_("message to retry"), null=True, blank=True)
    retry_of = models.ForeignKey(
        "self",
        verbose_name=_("retry of"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="retries",
        # Indexed only where set (taskstate_retry_of_idx): most tasks are no retry.
        db_index=False,
    )
    # Groups and pipelines: a parent row stands for its children; its counts are theirs.
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices, blank=True, default="")
    parent = models.ForeignKey(
        "self",
        verbose_name=_("group"),
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="children",
    )
    #: A child's place in its group or pipeline, from 1.
    position = models.PositiveIntegerField(_("position"), default=0)
    children_total = models.PositiveIntegerField(_("children"), default=0)
    children_done = models.PositiveIntegerField(_("children done"), default=0)
    children_failed = models.PositiveIntegerField(_("children failed"), default=0)
    children_running = models.PositiveIntegerField(_("children running"), default=0)
    # The object the task is about: its model's label and its pk as text ("" for none).
    object_type = models.CharField(_("object type"), max_length=201, blank=True, default="")
    object_pk = models.CharField(_("object id"), max_length=255, blank=True, default="")

    objects = TaskQuerySet.as_manager()

    class Meta:
        verbose_name = _("task")
        verbose_name_plural = _("tasks")
        ordering = ("-created_at", "-id")
        # Few indexes, on columns that rarely change: every index is work on each of the
        # worker's writes, and progress writes (progress, updated_at) touch none of them.
        indexes = (
            # A user's display list: WHERE user_id = ? AND (seen = false OR seen_at >= ?).
            models.Index(fields=("user", "seen", "created_at"), name="taskstate_user_seen_idx"),
            # Cleanup of stale queued, abandoned running and lost waiting tasks: few rows,
            # filtered by status and then by updated_at or due_at.
            models.Index(
                fields=("status",),
                name="taskstate_active_idx",
                condition=models.Q(status__in=("enqueued", "running")),
            ),
            models.Index(
                fields=("due_at",),
                name="taskstate_waiting_idx",
                condition=models.Q(status__in=("retrying", "delayed")),
            ),
            # Cleanup of finished tasks by age, and of seen tasks by when they were seen.
            models.Index(fields=("finished_at",), name="taskstate_finished_idx"),
            models.Index(fields=("seen_at",), name="taskstate_seen_at_idx"),
            # Workers look for new cancel requests (transitions.cancels_since): few rows.
            models.Index(
                fields=("cancel_requested_at",),
                name="taskstate_cancel_asked_idx",
                condition=models.Q(cancel_requested_at__isnull=False),
            ),
            # Deleting a task clears retry_of on its retries (SET_NULL): a lookup by it.
            models.Index(
                fields=("retry_of",),
                name="taskstate_retry_of_idx",
                condition=models.Q(retry_of__isnull=False),
            ),
            # The tasks about one object (its list and its stream's resync): few rows.
            models.Index(
                fields=("object_type", "object_pk", "created_at"),
                name="taskstate_object_idx",
                condition=~models.Q(object_type=""),
            ),
        )

    def __str__(self) -> str:
        return f"{self.description or self.actor_name} ({self.get_status_display()})"

    def get_status_display(self) -> str:  # type: ignore[no-redef,unused-ignore]
        # Django's own translates every choice to find one, on each call: rows render it
        # on every change.
        try:
            return str(Status(self.status).label)
        except ValueError:
            return str(self.status)

    @property
    def is_complete(self) -> bool:
        return self.status in COMPLETE_STATUSES

    @property
    def is_cancelling(self) -> bool:
        return self.cancel_requested_at is not None and not self.is_complete

    @property
    def is_group(self) -> bool:
        return bool(self.kind)

    @property
    def is_waiting(self) -> bool:
        """A child whose message is not sent yet (a pipeline step after a running one)."""
        return (
            self.parent_id is not None
            and self.status == Status.ENQUEUED
            and self.state_order == WAITING_ORDER
        )

    @property
    def is_not_run(self) -> bool:
        """A pipeline step that never ran because an earlier step failed."""
        return self.status == Status.SKIPPED and self.error_type == NOT_RUN_ERROR

    @property
    def duration(self) -> timedelta | None:
        """Time from the first start to the end (or to now while still running)."""
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at
