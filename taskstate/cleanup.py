"""Cleanup: old and stale tasks deleted, abandoned running tasks failed.

Used by the ``cleanup_tasks`` actor and the APScheduler job alike. No row a message on
its way still needs (to be refused, as after a cancel) is deleted: see
``TaskQuerySet.delete_old`` and ``delete_stale``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta

from django.utils import timezone

from taskstate.core.conf import get_settings
from taskstate.core.group_refresh import group_refresher
from taskstate.core.models import Task, TaskQuerySet
from taskstate.core.signals import announce
from taskstate.core.states import Status
from taskstate.web.publish import publish_removed_tasks

logger = logging.getLogger("taskstate")


@dataclass(frozen=True)
class CleanupReport:
    seen_deleted: int
    unseen_deleted: int
    stale_deleted: int
    abandoned_failed: int
    lost_failed: int = 0
    groups_refreshed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def cleanup() -> CleanupReport:
    """Apply the retention settings once; return what was done."""
    settings = get_settings()
    tasks = Task.objects.all()
    timeout, overdue = settings.RUNNING_TIMEOUT, settings.OVERDUE_AFTER
    failed = _fail(
        tasks.filter(status=Status.RUNNING).fail_abandoned_candidates(timeout),
        lambda rows: rows.fail_abandoned(timeout),
    )
    lost = _fail(tasks.fail_overdue_candidates(overdue), lambda rows: rows.fail_overdue(overdue))
    refreshed = _refresh_quiet_groups()
    # Deleted rows leave their owners' and objects' open pages, as a dismiss in another
    # tab does: their buttons would answer 404.
    removed = publish_removed_tasks
    report = CleanupReport(
        seen_deleted=tasks.delete_old(
            settings.DELETE_SEEN_AFTER, only_if_seen=True, removed=removed
        ),
        unseen_deleted=tasks.filter(seen=False).delete_old(
            settings.DELETE_UNSEEN_AFTER, only_if_seen=False, removed=removed
        ),
        stale_deleted=tasks.delete_stale(settings.STALE_ENQUEUED_AFTER, removed=removed),
        abandoned_failed=failed,
        lost_failed=lost,
        groups_refreshed=refreshed,
    )
    if any(report.as_dict().values()):
        logger.info("taskstate cleanup: %s", report.as_dict())
    return report


#: Seconds without a change after which an unfinished group is refreshed by the cleanup.
QUIET_GROUP_AFTER = 60


def _refresh_quiet_groups() -> int:
    """Refresh unfinished groups nothing refreshed for a while: a worker that died before
    a group's refresh, or children failed here, would leave the group behind."""
    cutoff = timezone.now() - timedelta(seconds=QUIET_GROUP_AFTER)
    quiet = Task.objects.exclude(kind="").active().filter(updated_at__lt=cutoff)
    pks = list(quiet.values_list("pk", flat=True)[:1_000])
    for pk in pks:
        group_refresher.changed(pk)
    if pks:
        group_refresher.flush(30.0)
    return len(pks)


def _fail(candidates: TaskQuerySet, fail: Callable[[TaskQuerySet], int]) -> int:
    """Fail the candidates; the rows that turned failed are announced to their owners."""
    pks = list(candidates.values_list("pk", flat=True))
    count = fail(Task.objects.filter(pk__in=pks))
    if count:
        for task in Task.objects.filter(pk__in=pks, status=Status.FAILED):
            announce(task, committed=True)
    return count
