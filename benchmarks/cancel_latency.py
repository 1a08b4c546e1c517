"""Time from a click on Cancel to the row reading ``cancelled``.

    TASKSTATE_TEST_REDIS_URL=redis://127.0.0.1:6379/2 python benchmarks/cancel_latency.py
    python benchmarks/cancel_latency.py --smoke       # 3 + 1 tries, for CI
    python benchmarks/cancel_latency.py --db bench_a  # a database of its own (dropped first)

A real ``rundramatiq`` process (Redis broker, PostgreSQL) runs an actor that reports
progress every 0.5 s; once it runs, the owner's POST to ``taskstate:cancel`` is made
(through Django's test client, in this process) at a random point of the actor's 0.5 s
cycle, and the row is read every 5 ms until it reads ``cancelled``. Then the same for an
actor that never reports, with dramatiq-abort's hard cancel (HARD_CANCEL_AFTER = 1 s).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import django_on_postgres, table


def wait_for(predicate: Any, timeout: float, step: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError("timed out")


def one_try(client: Any, send: Any, user: Any, *, running_fields: dict[str, Any]) -> float:
    from django.urls import reverse

    from taskstate.core.models import Status, Task

    message = send(user)
    task = wait_for(
        lambda: Task.objects.filter(
            message_id=message.message_id, status=Status.RUNNING, **running_fields
        ).first(),
        30,
    )
    time.sleep(random.uniform(0, 0.5))  # anywhere in the actor's reporting cycle
    started = time.perf_counter()
    response = client.post(reverse("taskstate:cancel", args=[task.pk]))
    assert response.status_code == 302, response.status_code
    wait_for(
        lambda: Task.objects.filter(pk=task.pk, status=Status.CANCELLED).exists(), 30, step=0.005
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--hard-tries", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--db",
        default="taskstate_bench_cancel",
        help="PostgreSQL database to drop, create and use (runs side by side need their own)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.tries, args.hard_tries = 3, 1

    django_on_postgres(args.db)
    import dramatiq
    from django.contrib.auth import get_user_model
    from django.test import Client, override_settings

    from taskstate.core.models import Task
    from tests.support.processes import child_env, start_worker
    from tests.testapp import tasks as actors
    from tests.testapp.abort import TestAbortable

    Task.objects.all().delete()
    user, _ = get_user_model().objects.get_or_create(username="bench-cancel")
    client = Client()
    client.force_login(user)
    broker = dramatiq.get_broker()
    broker.flush_all()
    abortable = TestAbortable()
    broker.middleware.append(abortable)
    env = child_env(
        DJANGO_SETTINGS_MODULE="tests.settings",
        TASKSTATE_TEST_SERVICES="1",
        TASKSTATE_TEST_DB_NAME=args.db,
        TASKSTATE_TEST_ABORT="1",
    )
    worker = start_worker(env)
    rows = []
    try:
        cooperative = [
            one_try(
                client,
                lambda u: actors.reports_every.send(0.5, for_state={"user_pk": u.pk}),
                user,
                running_fields={"progress__gt": 0},
            )
            for _ in range(args.tries)
        ]
        rows.append(_row("reports progress every 0.5 s (cooperative)", cooperative))
        with override_settings(TASKSTATE={"PROGRESS_INTERVAL": 0.5, "HARD_CANCEL_AFTER": 1.0}):
            hard = [
                one_try(
                    client,
                    lambda u: actors.never_reports.send("bench", for_state={"user_pk": u.pk}),
                    user,
                    running_fields={},
                )
                for _ in range(args.hard_tries)
            ]
        rows.append(_row("never reports, dramatiq-abort, HARD_CANCEL_AFTER 1 s", hard))
    finally:
        worker.stop()
        broker.middleware.remove(abortable)
    print(
        table(
            ["task", "tries", "median (s)", "max (s)", "min (s)"],
            rows,
        )
    )


def _row(label: str, times: list[float]) -> list[object]:
    return [
        label,
        len(times),
        f"{statistics.median(times):.3f}",
        f"{max(times):.3f}",
        f"{min(times):.3f}",
    ]


if __name__ == "__main__":
    main()
