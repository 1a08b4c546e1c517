"""Actors of the soak (``benchmarks/soak.py``).

Each records, outside the database under test (``_bench.soak_record``), when its body
started and when it ran to the end: the soak checks the rows against these records.
"""

from __future__ import annotations

import time
from typing import Any

import dramatiq

import taskstate
from _bench.soak_record import TO_CANCEL, record, recorder


@dramatiq.actor(max_retries=0)
def soak_quick(key: str, for_state: dict[str, Any] | None = None) -> None:
    record("start", key)
    record("end", key)


@dramatiq.actor(max_retries=0)
def soak_progress(key: str, steps: int, for_state: dict[str, Any] | None = None) -> None:
    record("start", key)
    for step in range(1, steps + 1):
        time.sleep(0.05)  # the task's own work
        taskstate.progress(step, steps)
    record("end", key)


@dramatiq.actor(max_retries=5, min_backoff=50, max_backoff=200)
def soak_flaky(key: str, for_state: dict[str, Any] | None = None) -> None:
    record("start", key)
    if recorder().incr(f"soak:tries:{key}") == 1:
        raise RuntimeError("first attempt fails on purpose")
    record("end", key)


@dramatiq.actor(max_retries=2, min_backoff=50, max_backoff=200)
def soak_doomed(key: str, for_state: dict[str, Any] | None = None) -> None:
    record("start", key)
    raise ValueError("fails on purpose, every attempt")


@dramatiq.actor(max_retries=0)
def soak_cancel_queued(key: str, for_state: dict[str, Any] | None = None) -> None:
    """Sent with a delay and cancelled by its owner at once: should never start."""
    record("start", key)
    record("end", key)


@dramatiq.actor(max_retries=0, time_limit=120_000)
def soak_cancel_running(key: str, seconds: float, for_state: dict[str, Any] | None = None) -> None:
    """Asks its owner to cancel it once started, and reports progress until it is."""
    record("start", key)
    recorder().rpush(TO_CANCEL, key)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        taskstate.progress(0, message="waiting to be cancelled")  # raises Cancelled
        time.sleep(0.05)
    record("end", key)
