"""Sample actors. Each takes ``for_state``, which is what makes taskstate track it.

``rundramatiq`` finds this module by its name; the demo app imports it in ``ready()``.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import dramatiq
from django.utils import timezone
from dramatiq.middleware import CurrentMessage

import taskstate
from taskstate.core.control import RETRY_OF_OPTION

REPORT_SECTIONS = 12
#: How fast the demo's work goes: each pause and back-off is multiplied by it (the
#: browser tests set 0.5; 1 shows the pace the actions' descriptions give).
PACE = float(os.environ.get("DEMO_PACE", "1"))


def pause(seconds: float) -> None:
    """A moment of (pretend) work, at the demo's pace."""
    time.sleep(seconds * PACE)


class FeedUnavailable(Exception):
    """The (imaginary) supplier feed the flaky import reads is down."""


@dramatiq.actor(max_retries=0, time_limit=60_000)
def build_report(for_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """About 12 s of work in sections, reporting progress after each one.

    Its Cancel button stops it at the next report: ``progress()`` raises
    ``taskstate.Cancelled``, and the report written so far is thrown away.
    """
    rows = 0
    try:
        for section in range(1, REPORT_SECTIONS + 1):
            pause(random.uniform(0.8, 1.2))
            rows += random.randint(40, 120)
            taskstate.progress(
                section, REPORT_SECTIONS, message=f"Section {section} of {REPORT_SECTIONS}"
            )
    except taskstate.Cancelled:
        # Clean up here (delete the half-written file), then let it go on: the task
        # ends "cancelled" and is not retried.
        raise
    number = random.randint(1000, 9999)
    return {"url": f"/reports/{number}.csv", "rows": rows}


@dramatiq.actor(
    max_retries=2, min_backoff=int(1_500 * PACE), max_backoff=int(3_000 * PACE), time_limit=30_000
)
def flaky_import(feed_down: bool = True, for_state: dict[str, Any] | None = None) -> int:
    """Fails every attempt while the supplier feed is down, then Dramatiq gives up.

    The feed is down for a message the demo sends and back for one sent again from its
    row (Retry: the message carries ``taskstate_retry_of``), however long the retries
    take; ``feed_down=False`` finds it back from the start.
    """
    taskstate.progress(10, message="Connecting to the supplier feed")
    pause(0.8)
    message = CurrentMessage.get_current_message()
    resent = message is not None and RETRY_OF_OPTION in message.options
    if feed_down and not resent:
        raise FeedUnavailable("The supplier feed answered 503 Service Unavailable")
    for record in range(1, 21):
        pause(0.05)
        taskstate.progress(record, 20, message=f"Record {record} of 20 imported")
    return 20


@dramatiq.actor(max_retries=0, time_limit=10_000)
def quick_ping(for_state: dict[str, Any] | None = None) -> dict[str, str]:
    """Done in a blink."""
    pause(0.2)
    return {"pong": timezone.now().isoformat()}


@dramatiq.actor(max_retries=0, time_limit=60_000)
def batch_item(items: int, for_state: dict[str, Any] | None = None) -> int:
    """One of a batch: works through ``items`` items, progress from ``track()``.

    At full pace whatever ``DEMO_PACE`` says: a batch ends in a few seconds anyway, and
    its row's time left shows only once it has run for a while.
    """
    for _ in taskstate.track(range(items)):
        time.sleep(random.uniform(0.05, 0.15))
    return items


@dramatiq.actor(max_retries=0, time_limit=60_000)
def fetch_orders(for_state: dict[str, Any] | None = None) -> int:
    """Pipeline step 1: "downloads" a file; its result goes to the next step."""
    for _ in taskstate.track(range(20)):
        pause(random.uniform(0.1, 0.2))
    return random.randint(500, 900)


@dramatiq.actor(max_retries=0, time_limit=60_000)
def check_orders(fail: bool, orders: int, for_state: dict[str, Any] | None = None) -> int:
    """Pipeline step 2: checks the orders; with ``fail`` it finds a bad one halfway."""
    for done in range(1, 11):
        pause(random.uniform(0.2, 0.3))
        if fail and done == 5:
            raise ValueError(f"Order {random.randint(1000, 9999)} has no customer")
        taskstate.progress(done, 10, message=f"{orders * done // 10} of {orders} orders checked")
    return orders


@dramatiq.actor(max_retries=0, time_limit=60_000)
def load_orders(orders: int, for_state: dict[str, Any] | None = None) -> dict[str, int]:
    """Pipeline step 3: loads the checked orders."""
    for _ in taskstate.track(range(10)):
        pause(random.uniform(0.1, 0.2))
    return {"loaded": orders}
