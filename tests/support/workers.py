"""Stopping the in-process Dramatiq workers that tests start."""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import Middleware


def stop_worker(broker: dramatiq.Broker, w: dramatiq.Worker) -> None:
    """Stop a test's worker, ending the test actors that would run on for seconds.

    A test that fails before it cancels ``counts_until_cancelled`` would otherwise leave it
    counting for 30 s, holding a worker thread and the messages behind it, and every
    test after it would time out waiting for its queue.
    """
    from tests.testapp import tasks

    tasks.TEST_OVER.set()
    try:
        w.stop()
    finally:
        tasks.TEST_OVER.clear()
    # Each Worker adds a middleware of its own to the broker and never takes it back.
    broker.middleware[:] = [m for m in broker.middleware if getattr(m, "worker", None) is not w]


class Sent(Middleware):
    """Records every message the broker enqueues (a real middleware): ids, actors and the
    messages themselves."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.actors: list[str] = []
        self.messages: list[Any] = []

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        self.ids.append(message.message_id)
        self.actors.append(message.actor_name)
        self.messages.append(message)
