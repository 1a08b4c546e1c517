"""What a process does before it goes: its last changes written, then their events sent.

Run by one exit hook (registered by the app's ``ready()``) and by the worker's
``after_worker_shutdown``, in this order: the background writer's last changes, the
refreshes of the groups they touched (due or not), the background thread's other jobs,
and last the events all of these announced. One place owns the order, above the
Dramatiq side and the web side alike.
"""

from __future__ import annotations

from taskstate.background import background
from taskstate.courier import courier
from taskstate.group_refresh import group_refresher
from taskstate.writer import SHUTDOWN_FLUSH, writer


def flush_all(timeout: float = SHUTDOWN_FLUSH) -> None:
    """Write, refresh and send everything pending, each step within ``timeout``."""
    writer.shutdown(timeout)
    group_refresher.flush(timeout)
    background.flush(timeout)
    courier.flush(timeout)


def at_exit() -> None:
    """The exit hook: :func:`flush_all` within 2 s a step (a process asked to stop is not
    held for long)."""
    flush_all(2.0)
