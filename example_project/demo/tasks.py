"""Sample actors. Each takes ``for_state``, which is what makes taskstate track it.

``rundramatiq`` finds this module by its name; the demo app imports it in ``ready()``.
"""

from __future__ import annotations

import random
import time
from typing import Any

import dramatiq
from django.utils import timezone

import taskstate

REPORT_SECTIONS = 12


class FeedUnavailable(Exception):
    """The (imaginary) supplier feed the flaky import reads is down."""


@dramatiq.actor(max_retries=0, time_limit=60_000)
def build_report(for_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """About 12 s of work in sections, reporting progress after each one."""
    rows = 0
    for section in range(1, REPORT_SECTIONS + 1):
        time.sleep(random.uniform(0.8, 1.2))
        rows += random.randint(40, 120)
        taskstate.progress(
            section, REPORT_SECTIONS, message=f"Section {section} of {REPORT_SECTIONS}"
        )
    number = random.randint(1000, 9999)
    return {"url": f"/reports/{number}.csv", "rows": rows}


@dramatiq.actor(max_retries=2, min_backoff=1_500, max_backoff=3_000, time_limit=30_000)
def flaky_import(for_state: dict[str, Any] | None = None) -> None:
    """Always fails: Dramatiq retries it twice, then it is failed for good."""
    taskstate.progress(10, message="Connecting to the supplier feed")
    time.sleep(0.8)
    raise FeedUnavailable("The supplier feed answered 503 Service Unavailable")


@dramatiq.actor(max_retries=0, time_limit=10_000)
def quick_ping(for_state: dict[str, Any] | None = None) -> dict[str, str]:
    """Done in a blink."""
    time.sleep(0.2)
    return {"pong": timezone.now().isoformat()}


@dramatiq.actor(max_retries=0, time_limit=60_000)
def batch_item(items: int, for_state: dict[str, Any] | None = None) -> int:
    """One of a batch: works through ``items`` items, progress from ``track()``."""
    for _ in taskstate.track(range(items)):
        time.sleep(random.uniform(0.05, 0.15))
    return items


@dramatiq.actor(max_retries=0, time_limit=60_000)
def fetch_orders(for_state: dict[str, Any] | None = None) -> int:
    """Pipeline step 1: "downloads" a file; its result goes to the next step."""
    for _ in taskstate.track(range(20)):
        time.sleep(random.uniform(0.1, 0.2))
    return random.randint(500, 900)


@dramatiq.actor(max_retries=0, time_limit=60_000)
def check_orders(fail: bool, orders: int, for_state: dict[str, Any] | None = None) -> int:
    """Pipeline step 2: checks the orders; with ``fail`` it finds a bad one halfway."""
    for done in range(1, 11):
        time.sleep(random.uniform(0.2, 0.3))
        if fail and done == 5:
            raise ValueError(f"Order {random.randint(1000, 9999)} has no customer")
        taskstate.progress(done, 10, message=f"{orders * done // 10} of {orders} orders checked")
    return orders


@dramatiq.actor(max_retries=0, time_limit=60_000)
def load_orders(orders: int, for_state: dict[str, Any] | None = None) -> dict[str, int]:
    """Pipeline step 3: loads the checked orders."""
    for _ in taskstate.track(range(10)):
        time.sleep(random.uniform(0.1, 0.2))
    return {"loaded": orders}
