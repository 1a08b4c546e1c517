"""Track the state of Dramatiq tasks that ask for it, and show each user their own tasks live.

Public API for actors: :func:`progress` and :func:`track`.
"""

from taskstate.tracking import progress, track

__all__ = ["progress", "track"]
__version__ = "1.0.0.dev0"
