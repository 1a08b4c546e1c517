"""Track the state of Dramatiq tasks that ask for it, and show each user their own tasks live.

Public API for actors: :func:`progress`, :func:`track`, :func:`cancel_requested` and the
exception :class:`Cancelled`; for senders of Dramatiq groups and pipelines:
:func:`track_group`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskstate.core.grouping import track_group
    from taskstate.worker.tracking import Cancelled, cancel_requested, progress, track

__all__ = ["Cancelled", "cancel_requested", "progress", "track", "track_group"]
__version__ = "1.0.0.dev0"


def __getattr__(name: str) -> Any:
    # Django imports this package before its models can be: the actor API, which writes
    # through them, is imported on first use.
    if name == "track_group":
        from taskstate.core import grouping

        return grouping.track_group
    if name in __all__:
        from taskstate.worker import tracking

        return getattr(tracking, name)
    raise AttributeError(f"module 'taskstate' has no attribute {name!r}")
