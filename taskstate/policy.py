"""The control policy and its helpers at the path projects write in ``CONTROL_POLICY``;
defined in :mod:`taskstate.core.policy`."""

from taskstate.core.policy import CANCEL, RETRY, VIEW, object_of, owner_or_staff, possible

__all__ = ["CANCEL", "RETRY", "VIEW", "object_of", "owner_or_staff", "possible"]
