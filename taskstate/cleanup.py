"""Cleanup: old and stale tasks deleted, abandoned running tasks failed.

Used by the ``cleanup_tasks`` actor and the APScheduler job alike. One rule stands above
the retention settings: no row that a message still on its way needs to be refused is
deleted. A message asked to cancel is refused by its row, and the worker's own final write
for it is what says no copy can come any more; so a task asked to cancel stays until a
worker ended it, and a group while one of its children may still get its message
(``TaskQuerySet.delete_old``, ``delete_stale``). Deleted rows leave their owners' open
pages, as a dismiss in another tab does.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta

from django.utils import timezone

from taskstate.core.conf import get_settings
from taskstate.core.group_refresh import group_refresher
from taskstate.core.models import Task
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
    abandoned_pks = list(
        tasks.filter(status=Status.RUNNING)
        .fail_abandoned_candidates(settings.RUNNING_TIMEOUT)
        .values_list("pk", flat=True)
    )
    failed = Task.objects.filter(pk__in=abandoned_pks).fail_abandoned(settings.RUNNING_TIMEOUT)
    if failed:
        _announce_failed(abandoned_pks)
    lost_pks = list(
        tasks.fail_overdue_candidates(settings.OVERDUE_AFTER).values_list("pk", flat=True)
    )
    lost = Task.objects.filter(pk__in=lost_pks).fail_overdue(settings.OVERDUE_AFTER)
    if lost:
        _announce_failed(lost_pks)
    refreshed = _refresh_quiet_groups()
    report = CleanupReport(
        seen_deleted=tasks.delete_old(
            settings.DELETE_SEEN_AFTER, only_if_seen=True, removed=_announce_removed
        ),
        unseen_deleted=tasks.filter(seen=False).delete_old(
            settings.DELETE_UNSEEN_AFTER, only_if_seen=False, removed=_announce_removed
        ),
        stale_deleted=tasks.delete_stale(settings.STALE_ENQUEUED_AFTER, removed=_announce_removed),
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
    """Refresh unfinished groups nothing refreshed for a while.

    A group's row follows its children through the process that wrote them; a worker
    that died between a child's last write and the group's refresh would leave the
    group behind (and failed-abandoned children never came through a worker at all).
    """
    cutoff = timezone.now() - timedelta(seconds=QUIET_GROUP_AFTER)
    quiet = Task.objects.exclude(kind="").active().filter(updated_at__lt=cutoff)
    pks = list(quiet.values_list("pk", flat=True)[:1_000])
    for pk in pks:
        group_refresher.changed(pk)
    if pks:
        group_refresher.flush(30.0)
    return len(pks)


def _announce_removed(rows: list[Task]) -> None:
    # Deleted rows leave their owners' and their objects' open pages, as a dismiss in
    # another tab does: a page would otherwise show a row whose buttons answer 404 (and,
    # should its message run after all, the task twice).
    publish_removed_tasks(rows)


def _announce_failed(pks: list[int]) -> None:
    # Tell the owners, like any other change: the row turns failed on their page.
    for task in Task.objects.filter(pk__in=pks, status=Status.FAILED):
        announce(task, committed=True)
