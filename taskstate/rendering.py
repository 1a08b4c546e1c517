"""What the list shows: one query for a user's display list, shared by the tag and views."""

from __future__ import annotations

from typing import Any

from taskstate.conf import get_settings
from taskstate.models import Task


def display_tasks(user: Any) -> list[Task]:
    """The tasks ``user`` sees in their list, newest first, in one query."""
    window = get_settings().DISPLAY_SECONDS_SINCE_SEEN
    return list(Task.objects.for_user(user).for_display(window))
