"""The ``cleanup_tasks`` actor; ``rundramatiq`` finds it here."""

from __future__ import annotations

import dramatiq


@dramatiq.actor(queue_name="default", max_retries=0)
def cleanup_tasks() -> dict[str, int]:
    """Delete old and stale tasks and fail abandoned ones, as the settings say.

    Rows a message still on its way needs to be refused are kept (``taskstate.cleanup``).
    """
    from taskstate.cleanup import cleanup

    return cleanup().as_dict()
