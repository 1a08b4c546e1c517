"""The Dramatiq middleware at the path projects list in ``DRAMATIQ_BROKER``;
defined in :mod:`taskstate.worker.middleware`."""

from taskstate.worker.middleware import StateMiddleware

__all__ = ["StateMiddleware"]
