"""The public signal, ``task_changed``; defined in :mod:`taskstate.core.signals`."""

from taskstate.core.signals import task_changed

__all__ = ["task_changed"]
