"""Signals sent by taskstate."""

from django.dispatch import Signal

#: Sent after a task's status changed and the change is committed.
#: ``sender`` is :class:`taskstate.middleware.StateMiddleware`; ``task`` is the
#: :class:`taskstate.models.Task` as written. Receivers' exceptions are logged, not raised.
task_changed = Signal()
