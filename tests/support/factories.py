"""Rows for tests that need tasks in a given state without running anything."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from taskstate.core.models import Status, Task

_ids = itertools.count(1)


def make_task(**fields: Any) -> Task:
    """A task row with a unique message id (done, actor "export"); any field overridable."""
    values: dict[str, Any] = {
        "message_id": f"msg-{next(_ids)}",
        "actor_name": "export",
        "status": Status.DONE,
    }
    values.update(fields)
    return Task.objects.create(**values)


def ago(seconds: float) -> datetime:
    return timezone.now() - timedelta(seconds=seconds)
