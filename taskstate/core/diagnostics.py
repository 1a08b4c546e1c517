"""Problems of the setup: the words the system checks and the list's DEBUG note share, and
a warning at a tracked send on a broker without ``StateMiddleware``."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from django.conf import settings

logger = logging.getLogger(__name__)

MIDDLEWARE_PATH = "taskstate.middleware.StateMiddleware"
#: Both paths name the one class: the one projects write, and where it is defined.
MIDDLEWARE_PATHS = (MIDDLEWARE_PATH, "taskstate.worker.middleware.StateMiddleware")
MIDDLEWARE_ID = "taskstate.W001"
MIDDLEWARE_MISSING = (
    f"{MIDDLEWARE_PATH} is not in DRAMATIQ_BROKER['MIDDLEWARE']; no task is tracked."
)
MIDDLEWARE_HINT = f"Add {MIDDLEWARE_PATH!r} to DRAMATIQ_BROKER['MIDDLEWARE']."
EVENT_BUS_ID = "taskstate.W002"
# Brokers whose worker runs in the web process (tests, the embedded demo).
_IN_PROCESS_BROKERS = ("dramatiq.brokers.stub.StubBroker",)


def event_bus_problem() -> tuple[str, str] | None:
    """W002's message and hint: without ``EVENTSTREAM_REDIS`` or a GRIP proxy, events stay
    in the worker's process, where no browser listens."""
    broker = getattr(settings, "DRAMATIQ_BROKER", None)
    if not isinstance(broker, dict):
        return None
    broker_path = broker.get("BROKER")
    if not isinstance(broker_path, str) or broker_path in _IN_PROCESS_BROKERS:
        return None
    if getattr(settings, "EVENTSTREAM_REDIS", None) or getattr(settings, "GRIP_URL", None):
        return None
    return (
        f"DRAMATIQ_BROKER uses {broker_path} but EVENTSTREAM_REDIS is not set: events "
        "sent by worker processes never reach the browsers.",
        "Add EVENTSTREAM_REDIS = {'host': ..., 'port': 6379, 'db': 0} so that "
        "workers and web processes share events through Redis pub/sub.",
    )


class UntrackedSendWarning(dramatiq.Middleware):
    """On a broker without ``StateMiddleware``: logs W001 once, at the first message sent
    with ``for_state``, which would otherwise go untracked without a word."""

    def __init__(self) -> None:
        self.warned = False

    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int) -> None:
        if self.warned:
            return
        try:
            asked = bool(message.kwargs) and "for_state" in message.kwargs
        except Exception:  # a message of another shape: never stop a send
            return
        if asked:
            self.warned = True
            logger.warning(
                "(%s) %s A message of %s was sent with for_state and is not tracked. HINT: %s",
                MIDDLEWARE_ID,
                MIDDLEWARE_MISSING,
                message.actor_name,
                MIDDLEWARE_HINT,
            )


def watch_sends(broker: dramatiq.Broker | None) -> None:
    """Give ``broker`` an :class:`UntrackedSendWarning` when it has no ``StateMiddleware``."""
    if broker is None or any(
        isinstance(m, UntrackedSendWarning)
        or any(f"{c.__module__}.{c.__qualname__}" in MIDDLEWARE_PATHS for c in type(m).__mro__)
        for m in broker.middleware
    ):
        return
    broker.add_middleware(UntrackedSendWarning())
