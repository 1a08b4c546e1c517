"""Actors the tests send; ``rundramatiq`` finds them in this module too."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import django
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
    """Reports progress, says it started (a file, no database), then runs for ``seconds``."""
    import time

    taskstate.progress(50, message="half way")
    with open(path, "w") as file:
        file.write("started")
    time.sleep(seconds)


@dramatiq.actor(max_retries=0)
async def async_steps(steps: int, for_state: dict[str, Any] | None = None) -> int:
    """An ``async def`` actor (Dramatiq's AsyncIO middleware) reporting progress.

    Each step waits, off the loop, until its progress write is done, so the test sees
    every step land while the task runs.
    """
    from taskstate.core.background import background
    from taskstate.worker.writer import writer

    for step in range(1, steps + 1):
        taskstate.progress(step, steps, message=f"async step {step}")
        await asyncio.to_thread(background.flush, 10)
        # The background writer: each step written before the next is reported.
        await asyncio.to_thread(writer.flush, 10)
    return steps


#: Set by a test to let ``async_until_cancelled`` go on after its first report.
GO_ON: dict[str, threading.Event] = {}


@dramatiq.actor(max_retries=0, time_limit=60_000)
async def async_until_cancelled(
    key: str, ask: bool = False, for_state: dict[str, Any] | None = None
) -> str:
    """An ``async def`` actor reporting progress until a cancel stops it.

    After its first report it waits for the test (which asks to cancel it meanwhile);
    then each step waits, off the loop, until its report is written and whatever it
    handed to a thread is done, so the next step sees what they learnt. ``ask``: after
    one more report it asks ``cancel_requested()`` instead, and returns when told.
    """
    from taskstate.core.background import background
    from taskstate.worker.writer import writer

    _ran(key)
    taskstate.progress(1, message="async step 1")
    await asyncio.to_thread(writer.flush, 10)
    STARTED[key].set()
    await asyncio.to_thread(GO_ON.setdefault(key, threading.Event()).wait, 30)
    for step in range(2, 11):
        if not ask or step == 2:
            taskstate.progress(step, message=f"async step {step}")
        elif taskstate.cancel_requested():
            return "cleaned up"
        await asyncio.to_thread(background.flush, 10)
        await asyncio.to_thread(writer.flush, 10)
    FINISHED.add(key)
    return "finished"


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


#: Cleared by a test that wants the report written after the running row (the background
#: writer would otherwise merge a report made at once into the running change).
REPORT = threading.Event()
REPORT.set()


@dramatiq.actor(max_retries=0)
def reports_huge_progress(size: int, for_state: dict[str, Any] | None = None) -> None:
    REPORT.wait(timeout=20)
    taskstate.progress(50, message="m" * size)
    # Stay running until the test has the bar: the final row would make it moot.
    RELEASE.wait(timeout=20)


# --- owner control (tests/test_control.py) ---------------------------------------------
#
# Each actor counts its runs by key, and records how far it got, so a test can tell that
# a cancelled body never ran, stopped mid-way, or was not retried.
RUNS: dict[str, int] = {}
FINISHED: set[str] = set()
#: Set by an actor once it reported its first progress: the test may cancel it now.
STARTED: dict[str, threading.Event] = {}
#: Set while a test's worker stops (tests/conftest.py ``stop_worker``): the long actors
#: below end at once, so a test that failed before its cancel leaves nothing running
#: into the tests after it.
TEST_OVER = threading.Event()


def _ran(key: str) -> None:
    with _lock:
        RUNS[key] = RUNS.get(key, 0) + 1
    STARTED.setdefault(key, threading.Event())


@dramatiq.actor(max_retries=3, min_backoff=10, max_backoff=20, time_limit=60_000)
def counts_until_cancelled(key: str, for_state: dict[str, Any] | None = None) -> str:
    """Reports progress every 10 ms for up to 30 s; a cancel stops it at a report."""

    _ran(key)
    for step in range(1, 3001):
        taskstate.progress(step % 100, message=f"step {step}")
        STARTED[key].set()
        if TEST_OVER.wait(0.01):
            return "abandoned"
    FINISHED.add(key)
    return "finished"


@dramatiq.actor(max_retries=0, time_limit=60_000)
def checks_cancel(key: str, for_state: dict[str, Any] | None = None) -> str:
    """Reports no progress; asks cancel_requested() and returns early, cleaning up."""
    import time

    _ran(key)
    STARTED[key].set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if taskstate.cancel_requested():
            return "cleaned up"
        if TEST_OVER.wait(0.01):
            return "abandoned"
    FINISHED.add(key)
    return "finished"


#: Set by a test to let ``ignores_cancel`` return.
LET_FINISH: dict[str, threading.Event] = {}


@dramatiq.actor(max_retries=3, min_backoff=10, max_backoff=20, time_limit=60_000)
def ignores_cancel(key: str, for_state: dict[str, Any] | None = None) -> str:
    """Reports no progress and never asks: runs until the test lets it finish."""
    _ran(key)
    STARTED[key].set()
    if LET_FINISH.setdefault(key, threading.Event()).wait(30) and not TEST_OVER.is_set():
        FINISHED.add(key)
        return "finished"
    return "abandoned"


@dramatiq.actor(max_retries=0)
def runs_once(key: str, for_state: dict[str, Any] | None = None) -> str:
    _ran(key)
    FINISHED.add(key)
    return key


# A worker takes the messages it has prefetched by actor priority (lower first); among
# equal priorities Dramatiq 2 keeps the order they were sent in, Dramatiq 1.17 does not.
# A one-thread test that needs "this child runs, then that one, and those wait" says so
# with priorities rather than relying on the order of a group's messages.
@dramatiq.actor(max_retries=0, priority=10)
def runs_once_after(key: str, for_state: dict[str, Any] | None = None) -> str:
    """``runs_once`` that a worker takes after every message of a lower priority."""
    return runs_once.fn(key, for_state)


@dramatiq.actor(max_retries=3, min_backoff=10, max_backoff=20, time_limit=60_000, priority=5)
def counts_until_cancelled_after(key: str, for_state: dict[str, Any] | None = None) -> str:
    """``counts_until_cancelled``, taken after ``runs_once`` and before ``runs_once_after``."""
    return counts_until_cancelled.fn(key, for_state)


@dramatiq.actor(max_retries=0, time_limit=60_000, priority=5)
def ignores_cancel_after(key: str, for_state: dict[str, Any] | None = None) -> str:
    """``ignores_cancel``, taken after ``runs_once`` and before ``runs_once_after``."""
    return ignores_cancel.fn(key, for_state)


@dramatiq.actor(max_retries=0, time_limit=60_000, priority=10)
def counts_until_cancelled_last(key: str, for_state: dict[str, Any] | None = None) -> str:
    """``counts_until_cancelled``, taken after every message of a lower priority."""
    return counts_until_cancelled.fn(key, for_state)


@dramatiq.actor(max_retries=1, min_backoff=4_000, max_backoff=4_000)
def fails_then_backs_off(key: str, for_state: dict[str, Any] | None = None) -> None:
    """Fails; its retry is 2 to 4 seconds away (the test cancels it in between)."""
    _ran(key)
    raise RuntimeError("fails; retry in a minute")


@dramatiq.actor(max_retries=0)
def fails_on_first_run(key: str, items: list[int], for_state: dict[str, Any] | None = None) -> int:
    """Fails the first time it is sent with ``key``; a retry of it succeeds."""
    _ran(key)
    if RUNS[key] == 1:
        raise RuntimeError("the first run fails")
    FINISHED.add(key)
    return sum(items)


@dramatiq.actor(max_retries=3, min_backoff=10, max_backoff=20, time_limit=120_000)
def never_reports(key: str, for_state: dict[str, Any] | None = None) -> str:
    """Runs for up to 60 s without a single progress report: only a hard cancel stops it."""
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not TEST_OVER.wait(0.05):
        pass
    return key


@dramatiq.actor(max_retries=3, min_backoff=10, max_backoff=20, time_limit=120_000)
def reports_every(seconds: float, for_state: dict[str, Any] | None = None) -> str:
    """Reports progress every ``seconds`` for up to 60 s (benchmarks/cancel_latency.py)."""
    import time

    for step in range(1, int(60 / seconds) + 1):
        taskstate.progress(step % 100, message=f"step {step}")
        time.sleep(seconds)
    return "finished"


# --- groups and pipelines (tests/test_groups.py) ---------------------------------------


@dramatiq.actor(max_retries=0)
def add_one(value: int, for_state: dict[str, Any] | None = None) -> int:
    """A pipeline step: its result is the next step's last argument."""
    taskstate.progress(50)
    return value + 1


@dramatiq.actor(max_retries=0)
def step_fails(value: int, for_state: dict[str, Any] | None = None) -> int:
    raise ValueError(f"step refused {value}")


@dramatiq.actor(max_retries=0, time_limit=120_000)
def paced(steps: int, pause: float, for_state: dict[str, Any] | None = None) -> int:
    """Reports progress once per step, ``pause`` seconds apart (browser and worker tests)."""
    import time

    for step in range(1, steps + 1):
        time.sleep(pause)
        taskstate.progress(step, steps, message=f"step {step} of {steps}")
    return steps


class BrokenNotes(Exception):
    """An exception whose ``__notes__`` raise: Python < 3.13's traceback module fails."""

    @property
    def __notes__(self) -> list[str]:
        raise RuntimeError("notes are broken")


@dramatiq.actor(max_retries=0)
def raises_with_broken_notes(for_state: dict[str, Any] | None = None) -> None:
    raise BrokenNotes("broken")


# --- time left after a retry (tests/test_estimates.py) --------------------------------
#
#: When each key's second attempt began its body; events set once it is half-way, and
#: by the test to let it end.
SECOND_ATTEMPT_BEGAN: dict[str, Any] = {}
HALFWAY: dict[str, threading.Event] = {}
FINISH: dict[str, threading.Event] = {}


@dramatiq.actor(max_retries=1, min_backoff=1_000, max_backoff=2_000, time_limit=60_000)
def fails_then_reports_half(key: str, for_state: dict[str, Any] | None = None) -> None:
    """The first attempt fails (a back-off of 0.5 to 2 s follows); the second reports 50 %
    and stays running until the test sets ``FINISH[key]``."""
    from django.utils import timezone

    with _lock:
        FLAKY_CALLS[key] = FLAKY_CALLS.get(key, 0) + 1
        calls = FLAKY_CALLS[key]
    if calls == 1:
        raise RuntimeError("first attempt fails")
    SECOND_ATTEMPT_BEGAN[key] = timezone.now()
    taskstate.progress(50)
    HALFWAY.setdefault(key, threading.Event()).set()
    FINISH.setdefault(key, threading.Event()).wait(timeout=20)


if django.VERSION >= (6, 0):
    # django.tasks functions (tests/test_backends.py): rundramatiq imports this module, so
    # importing them here declares their actors in its workers.
    from tests.testapp import jobs  # noqa: F401
