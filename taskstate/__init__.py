"""Track the state of Dramatiq tasks that ask for it, and show each user their own tasks live.

Public API for actors: :func:`progress`, :func:`track`, :func:`cancel_requested` and the
exception :class:`Cancelled`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskstate.tracking import Cancelled, cancel_requested, progress, track

__all__ = ["Cancelled", "cancel_requested", "progress", "track"]
__version__ = "1.0.0.dev0"


def __getattr__(name: str) -> Any:
    # Django imports this package before its models can be: the actor API, which writes
    # through them, is imported on first use.
    if name in __all__:
        from taskstate import tracking

        return getattr(tracking, name)
    raise AttributeError(f"module 'taskstate' has no attribute {name!r}")
