"""Cost of taskstate.progress(): per call while throttled, and per call when not (each
call then hands its report to the background writer).

    python benchmarks/progress_cost.py            # 1,000,000 throttled calls, 2,000 reports
    python benchmarks/progress_cost.py --smoke    # small, for CI

Baselines measured in the same run: a call to an empty function taking the same
arguments, and progress() outside any tracked message (a no-op).
"""

from __future__ import annotations

import argparse
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import django_on_postgres, table


def per_call(statement: str, namespace: dict[str, Any], number: int) -> float:
    """Best of five runs, in nanoseconds per call."""
    runs = timeit.repeat(statement, globals=namespace, number=number, repeat=5)
    return min(runs) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    calls = 20_000 if args.smoke else 1_000_000
    writes = 50 if args.smoke else 2_000

    django_on_postgres("taskstate_bench_progress")
    from django.utils import timezone

    import taskstate
    from taskstate.core import transitions
    from taskstate.core.for_state import Origin, TaskIdentity
    from taskstate.core.models import Status, Task
    from taskstate.core.states import running_order
    from taskstate.worker.tracking import MessageRun, _current
    from taskstate.worker.writer import cancels, writer

    def empty(done: float, total: float | None = None, message: str | None = None) -> None:
        return None

    Task.objects.all().delete()
    origin = Origin(
        "bench-progress", "bench", "default", timezone.now(), TaskIdentity(None, "bench", "", "")
    )
    running = transitions.Change(origin, Status.RUNNING, running_order(1), {"attempts": 1})
    transitions.write_batch([running])
    # The process knows the cancel requests, as after a message's start (CancelWatch).
    cancels.refresh()
    namespace: dict[str, Any] = {"progress": taskstate.progress, "empty": empty, "i": 0}

    empty_ns = per_call("empty(i % 100, 100)", namespace, calls)
    outside_ns = per_call("progress(i % 100, 100)", namespace, calls)

    # Throttled: a tracked message whose last write was just now; every call lands in
    # the "held back" branch (value changes, interval not yet over).
    run = MessageRun(origin=origin, attempt=1, interval=3600.0)
    run.next_write_at = time.monotonic() + 3600
    token = _current.set(run)
    try:
        namespace["n"] = iter(range(10**9))
        throttled_ns = per_call("progress(next(n) % 100, 100)", namespace, calls)
        counter_ns = per_call("next(n) % 100", namespace, calls)
    finally:
        _current.reset(token)

    # Not throttled: every call hands a report to the background writer (a lock and a
    # merge with the message's report still waiting); the writer's batches are not timed.
    rows = []
    run = MessageRun(origin=origin, attempt=1, interval=0.0)
    token = _current.set(run)
    cancels.refresh()
    try:
        start = time.perf_counter()
        for step in range(writes):
            taskstate.progress(step % 100, 100, message=f"step {step}")
        elapsed = time.perf_counter() - start
    finally:
        _current.reset(token)
    assert writer.flush(60), "the background writer did not drain"
    rows.append(
        [
            "not throttled: every call handed to the writer",
            f"{elapsed / writes * 1e6:,.1f} µs",
            f"{writes / elapsed:,.0f} reports/s (written in the writer's batches)",
        ]
    )

    print(f"progress() cost, PostgreSQL; {calls:,} calls per figure (best of 5)\n")
    print(
        table(
            ["case", "per call", "note"],
            [
                ["empty function, same arguments (baseline)", f"{empty_ns:,.0f} ns", "1.0x"],
                [
                    "progress() outside a tracked message",
                    f"{outside_ns:,.0f} ns",
                    f"{outside_ns / empty_ns:.1f}x baseline",
                ],
                [
                    "progress() throttled (held back)",
                    f"{throttled_ns - counter_ns:,.0f} ns",
                    f"{(throttled_ns - counter_ns) / empty_ns:.1f}x baseline; counter cost removed",
                ],
                *rows,
            ],
        )
    )


if __name__ == "__main__":
    main()
