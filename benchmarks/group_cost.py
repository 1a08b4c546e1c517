"""Cost of a tracked group as it grows: statements per child transition, events to the page.

A group of N children (``taskstate.track_group``), each reporting progress five times,
run by an in-process worker (StubBroker, 8 threads) on PostgreSQL, events published to
Redis. For N = 10, 100 and 1,000, and for 1,000 tasks sent one by one (no group) as a
baseline, it counts:

- every statement of every connection, split into the children's own writes (enqueue,
  start, progress, end: unchanged by grouping), the group's refreshes (the refresh
  thread) and the group's creation (``track_group``);
- every event sent on the user's channel, and the most sent in any one second.

    python benchmarks/group_cost.py            # N = 10, 100, 1,000
    python benchmarks/group_cost.py --smoke    # N = 10, 50, for CI
    python benchmarks/group_cost.py --send 10000   # what sending a group costs the caller

``--send N`` times only the caller's side of a group of N children, no worker running:
``track_group()`` (the rows written) and ``run()`` (the messages sent, each child's
``enqueued`` row written by the sender), median of three.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter as Tally
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import django_on_postgres, table


class Statements:
    """Statements of every connection, by the kind of thread that ran them."""

    def __init__(self) -> None:
        self.by_thread: Tally[str] = Tally()
        self.lock = threading.Lock()

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        name = threading.current_thread().name
        # Group refreshes run on the background thread (with nothing else here: the actor
        # is not async).
        kind = "refresh" if name == "taskstate-background" else "other"
        with self.lock:
            self.by_thread[kind] += 1
        return execute(sql, params, many, context)

    def reset(self) -> None:
        with self.lock:
            self.by_thread = Tally()


class Events:
    """Times at which an event went out on a channel."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()

    def wrap(self, send_event: Any) -> Any:
        def counted(channel: str, event_type: str, data: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.times.append(time.monotonic())
            return send_event(channel, event_type, data, **kwargs)

        return counted

    def peak_per_second(self) -> int:
        times = sorted(self.times)
        best, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] > 1.0:
                start += 1
            best = max(best, end - start + 1)
        return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--send", type=int, default=0, help="only time sending N children")
    parser.add_argument("--db", default="taskstate_bench_groups", help="the database it creates")
    args = parser.parse_args()
    sizes = [10, 50] if args.smoke else [10, 100, 1000]

    django_on_postgres(args.db)
    import django_eventstream
    import dramatiq
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connections
    from django.db.backends.signals import connection_created
    from django_dramatiq.middleware import DbConnectionsMiddleware
    from dramatiq.brokers.stub import StubBroker
    from dramatiq.middleware import Pipelines

    import taskstate
    from taskstate.core import groups
    from taskstate.core.models import Task
    from taskstate.worker.middleware import StateMiddleware
    from tests.support.drain import flush

    statements = Statements()

    def install(sender: Any = None, connection: Any = None, **kwargs: Any) -> None:
        if statements not in connection.execute_wrappers:
            connection.execute_wrappers.append(statements)

    connection_created.connect(install, weak=False)
    for conn in connections.all():
        conn.settings_dict["CONN_MAX_AGE"] = None
        conn.close()
    events = Events()
    django_eventstream.send_event = events.wrap(django_eventstream.send_event)
    # Each group refresh that ran, counted where the refresher looks it up.
    refreshed: list[int] = []
    real_refresh = groups.refresh_group

    def counted_refresh(pk: int) -> Any:
        refreshed.append(pk)
        return real_refresh(pk)

    groups.refresh_group = counted_refresh

    settings.TASKSTATE = {}
    broker = StubBroker(middleware=[StateMiddleware(), Pipelines(), DbConnectionsMiddleware()])
    broker.emit_after("process_boot")

    def step(for_state: dict[str, Any] | None = None) -> None:
        for done in range(1, 6):
            time.sleep(0.002)
            taskstate.progress(done, 5)

    actor = dramatiq.actor(step, broker=broker, actor_name="bench_step")
    if args.send:
        user, _ = get_user_model().objects.get_or_create(username="bench")
        times: dict[str, list[float]] = {"track_group()": [], "run()": []}
        for _ in range(3):
            Task.objects.all().delete()
            batch = dramatiq.group((actor.message() for _ in range(args.send)), broker=broker)
            start = time.perf_counter()
            tracked = taskstate.track_group(batch, for_state={"user_pk": user.pk})
            times["track_group()"].append(time.perf_counter() - start)
            start = time.perf_counter()
            tracked.run()
            times["run()"].append(time.perf_counter() - start)
            enqueued = Task.objects.filter(parent=tracked.task, status="enqueued").count()
            assert enqueued == args.send, enqueued
            broker.flush_all()
        print(f"Sending a group of {args.send:,} children (no worker), median of 3:\n")
        print(
            table(
                ["step", "seconds"],
                [[step, f"{sorted(t)[1]:.2f}"] for step, t in times.items()],
            )
        )
        return
    worker = dramatiq.Worker(broker, worker_threads=8, worker_timeout=10)
    worker.start()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    rows = []
    try:
        runs = [
            ("warm-up", 20, True),
            *((f"group of {n:,}", n, True) for n in sizes),
            (f"{sizes[-1]:,} tasks, no group", sizes[-1], False),
        ]
        for label, size, grouped in runs:
            Task.objects.all().delete()
            flush()
            statements.reset()
            events.times = []
            refreshes_before = len(refreshed)
            start = time.monotonic()
            for_state = {"user_pk": user.pk, "description": label}
            if grouped:
                batch = dramatiq.group((actor.message() for _ in range(size)), broker=broker)
                tracked = taskstate.track_group(batch, for_state=for_state)
                created = statements.by_thread["other"]
                tracked.run()
            else:
                created = 0
                for _ in range(size):
                    actor.send(for_state=for_state)
            broker.join(actor.queue_name)
            worker.join()
            flush(30)
            elapsed = time.monotonic() - start
            if label == "warm-up":
                continue
            children = Task.objects.filter(parent__isnull=False) if grouped else Task.objects
            statuses = sorted(children.values_list("status", flat=True))
            assert statuses == ["done"] * size, (label, Tally(statuses))
            if grouped:
                group = Task.objects.get(parent__isnull=True)
                assert (group.status, group.children_done) == ("done", size), label
            own = statements.by_thread["other"] - created
            refresh = statements.by_thread["refresh"]
            # A group is refreshed on the background thread: none counted means the count
            # looked in the wrong place.
            assert refresh > 0 if grouped else refresh == 0, (label, refresh)
            # A child's transitions: enqueued, running, done, and its progress writes.
            transitions = own  # each of the children's own statements is one transition
            rows.append(
                [
                    label,
                    f"{created}",
                    f"{own:,}",
                    f"{refresh:,}",
                    f"{len(refreshed) - refreshes_before:,}",
                    f"{refresh / transitions:.3f}",
                    f"{(own + refresh) / transitions:.3f}",
                    f"{len(events.times):,}",
                    f"{len(events.times) / elapsed:.1f}",
                    f"{events.peak_per_second()}",
                    f"{elapsed:.1f}",
                ]
            )
    finally:
        worker.stop()
    print(
        "Group cost: children of 5 progress reports each, StubBroker, 8 worker threads, "
        "PostgreSQL (persistent connections), events published to Redis, "
        "GROUP_INTERVAL 1.0 s, PROGRESS_INTERVAL 0.5 s\n"
    )
    print(
        table(
            [
                "run",
                "creation statements",
                "children's own statements (= transitions)",
                "refresh statements",
                "refreshes",
                "refresh statements / child transition",
                "all statements / child transition",
                "events to the page",
                "events / s (mean)",
                "events in the busiest second",
                "seconds",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
