"""Actors the tests send; ``rundramatiq`` finds them in this module too."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import dramatiq

import taskstate


@dramatiq.actor(max_retries=0)
def noop(for_state: dict[str, Any] | None = None) -> None:
    return None


@dramatiq.actor(max_retries=0)
def untracked_noop() -> None:
    return None


@dramatiq.actor(max_retries=0)
def returns(value: Any, for_state: dict[str, Any] | None = None) -> Any:
    return value


@dramatiq.actor(max_retries=0)
def with_progress(steps: int, for_state: dict[str, Any] | None = None) -> int:
    for i in range(steps):
        taskstate.progress(i + 1, steps, message=f"step {i + 1}")
    return steps


@dramatiq.actor(max_retries=2, min_backoff=10, max_backoff=20)
def always_fails(for_state: dict[str, Any] | None = None) -> None:
    raise ValueError("broken on purpose")


FLAKY_CALLS: dict[str, int] = {}
_lock = threading.Lock()


@dramatiq.actor(max_retries=3, min_backoff=10, max_backoff=20)
def fails_once(key: str, for_state: dict[str, Any] | None = None) -> str:
    with _lock:
        FLAKY_CALLS[key] = FLAKY_CALLS.get(key, 0) + 1
        calls = FLAKY_CALLS[key]
    if calls == 1:
        raise RuntimeError("first attempt fails")
    return "ok"


@dramatiq.actor(max_retries=0, throws=(KeyError,))
def throws_expected(for_state: dict[str, Any] | None = None) -> None:
    raise KeyError("expected")


@dramatiq.actor(max_retries=0)
def skips(for_state: dict[str, Any] | None = None) -> None:
    raise dramatiq.middleware.SkipMessage("not today")


@dramatiq.actor(max_retries=0)
def echo_description(for_state: dict[str, Any] | None = None) -> str:
    return str((for_state or {}).get("description"))


@dramatiq.actor(max_retries=0)
def returns_object(for_state: dict[str, Any] | None = None) -> object:
    return object()


@dramatiq.actor(max_retries=0)
def labelled(for_state: dict[str, Any] | None = None) -> str:
    """Reports its own description as progress: a crossed wire would show."""
    label = str((for_state or {}).get("description"))
    for step in range(1, 4):
        taskstate.progress(step * 30, message=label)
    return label


@dramatiq.actor(max_retries=0, time_limit=120_000)
def sleeps(seconds: float, for_state: dict[str, Any] | None = None) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        taskstate.progress(0, message="sleeping")
        time.sleep(0.05)


@dramatiq.actor(max_retries=0)
def nul_everywhere(fail: bool, for_state: dict[str, Any] | None = None) -> dict[str, str]:
    taskstate.progress(50, message="half\x00way")
    if fail:
        raise ValueError("bad\x00byte")
    return {"text": "with\x00nul", "kept": "\\u0000 is text here"}


@dramatiq.actor(max_retries=0)
def leaves_file(path: str, for_state: dict[str, Any] | None = None) -> str:
    """Leaves a trace that needs no database: it ran even if its state was not recorded."""
    with open(path, "w") as file:
        file.write("ran")
    return path


@dramatiq.actor(max_retries=0)
def file_then_sleeps(path: str, seconds: float, for_state: dict[str, Any] | None = None) -> None:
    """Says it started (a file, no database), then runs for ``seconds``."""
    import time

    with open(path, "w") as file:
        file.write("started")
    time.sleep(seconds)


@dramatiq.actor(max_retries=0)
async def async_steps(steps: int, for_state: dict[str, Any] | None = None) -> int:
    """An ``async def`` actor (Dramatiq's AsyncIO middleware) reporting progress.

    Each step waits, off the loop, until its progress write is done, so the test sees
    every step land while the task runs.
    """
    from taskstate.handoff import handoff
    from taskstate.writer import writer

    for step in range(1, steps + 1):
        taskstate.progress(step, steps, message=f"async step {step}")
        await asyncio.to_thread(handoff.flush, 10)
        await asyncio.to_thread(writer.flush, 10)
    return steps


# --- hostile outcomes (tests/test_values.py) -------------------------------------------
#
# The outcome an actor has is looked up by key in this process (the in-process worker
# shares it), so a test can hand any Python object to an actor: values the broker's JSON
# could not carry (a list 3,000 deep, an exception whose __str__ raises).
OUTCOMES: dict[str, dict[str, Any]] = {}
#: Keys of actors that got past every progress() call: progress never raised into them.
REACHED: set[str] = set()


@dramatiq.actor(max_retries=0)
def acts_out(key: str, for_state: dict[str, Any] | None = None) -> Any:
    outcome = OUTCOMES[key]
    for message in outcome.get("progress", ()):
        taskstate.progress(50, message=message)
    REACHED.add(key)
    if outcome.get("raises") is not None:
        raise outcome["raises"]
    return outcome.get("result")


@dramatiq.actor(max_retries=1, min_backoff=3_000, max_backoff=3_000)
def fails_then_waits(for_state: dict[str, Any] | None = None) -> None:
    raise RuntimeError("fails; its retry is 1.5 to 3 seconds away")


#: Set by a test once it has seen what it waits for; actors that wait on it then end.
RELEASE = threading.Event()


@dramatiq.actor(max_retries=0)
def reports_huge_progress(size: int, for_state: dict[str, Any] | None = None) -> None:
    taskstate.progress(50, message="m" * size)
    # Stay running until the test has the bar: the final row would make it moot.
    RELEASE.wait(timeout=20)
