"""Worker overhead per message: untracked vs taskstate-tracked vs django_dramatiq's AdminMiddleware.

Same broker class (StubBroker), same no-op actor, same in-process worker, same
PostgreSQL, same run. Counts every statement of every connection (the background writer's
thread included) and times whole lifecycles (send + process + the state written), then
prints ratios against the untracked baseline. taskstate runs with both write modes
(``WRITE_MODE``: "immediate", one write per hook; "background", the batching writer).

    python benchmarks/worker_overhead.py               # 2,000 messages per variant
    python benchmarks/worker_overhead.py --threads 8   # 8 worker threads
    python benchmarks/worker_overhead.py --smoke       # 50, for CI
    python benchmarks/worker_overhead.py --core --db perf_bench   # 4 variants, own database
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import django_on_postgres, table


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        with self.lock:
            self.count += 1
        return execute(sql, params, many, context)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="worker threads")
    parser.add_argument(
        "--db", default="taskstate_bench_worker", help="PostgreSQL database (dropped first)"
    )
    parser.add_argument(
        "--core",
        action="store_true",
        help="untracked, immediate, background and AdminMiddleware only",
    )
    parser.add_argument(
        "--worker-time",
        action="store_true",
        help="time the worker alone: send each round while the worker is paused, then "
        "time from resume until every message is processed and its state written",
    )
    args = parser.parse_args()
    n = 50 if args.smoke else args.messages
    rounds = 1 if args.smoke else args.rounds

    django_on_postgres(args.db)
    import dramatiq
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connections
    from django.db.backends.signals import connection_created
    from django_dramatiq.middleware import AdminMiddleware, DbConnectionsMiddleware
    from django_dramatiq.models import Task as AdminTask
    from dramatiq.brokers.stub import StubBroker

    from taskstate.conf import get_settings
    from taskstate.middleware import StateMiddleware
    from taskstate.models import Task
    from taskstate.writer import cancels, writer

    counter = Counter()

    def install(sender: Any = None, connection: Any = None, **kwargs: Any) -> None:
        # connection_created fires again on every reconnect of the same wrapper object.
        if counter not in connection.execute_wrappers:
            connection.execute_wrappers.append(counter)

    connection_created.connect(install, weak=False)
    for conn in connections.all(initialized_only=True):
        install(connection=conn)

    user, _ = get_user_model().objects.get_or_create(username="bench")

    def run_variant(
        name: str, middleware: list[Any], kwargs: dict[str, Any], taskstate: dict[str, Any]
    ) -> tuple[float, float, float]:
        settings.TASKSTATE = taskstate
        get_settings.cache_clear()  # assigned, not override_settings: no setting_changed
        broker = StubBroker(middleware=[*middleware, DbConnectionsMiddleware()])
        broker.emit_after("process_boot")

        def noop(**_: Any) -> None:
            return None

        actor = dramatiq.actor(
            noop, broker=broker, actor_name=f"noop_{len(broker.actors)}_{id(broker)}"
        )
        worker = dramatiq.Worker(broker, worker_threads=args.threads, worker_timeout=10)
        worker.start()
        try:
            # warm-up: connections, template cache
            for _ in range(20):
                actor.send(**kwargs)
            broker.join(actor.queue_name)
            worker.join()
            writer.flush(30)
            per_message: list[float] = []
            statements: list[float] = []
            reads: list[float] = []
            for _ in range(rounds):
                Task.objects.all().delete()
                AdminTask.tasks.all().delete()
                before = counter.count
                looks = cancels.reads
                if args.worker_time:
                    worker.pause()
                    for _ in range(n):
                        actor.send(**kwargs)
                    before = counter.count  # the worker's statements only
                    start = time.perf_counter()
                    worker.resume()
                else:
                    start = time.perf_counter()
                    for _ in range(n):
                        actor.send(**kwargs)
                broker.join(actor.queue_name)
                worker.join()
                assert writer.flush(30), "the background writer did not drain"
                elapsed = time.perf_counter() - start
                per_message.append(elapsed / n)
                statements.append((counter.count - before) / n)
                reads.append((cancels.reads - looks) / n)
        finally:
            worker.stop()
            writer.release()
        return (
            statistics.median(per_message),
            statistics.median(statements),
            statistics.median(reads),
        )

    tracked = {"for_state": {"user_pk": user.pk, "description": "bench"}}
    immediate = {"WRITE_MODE": "immediate"}
    background = {"WRITE_MODE": "background"}
    variants = [
        ("untracked", [StateMiddleware()], {}, immediate),
        ("taskstate immediate", [StateMiddleware()], tracked, immediate),
        ("taskstate background", [StateMiddleware()], tracked, background),
        (
            "taskstate immediate, SYNCHRONOUS_COMMIT=False",
            [StateMiddleware()],
            tracked,
            {**immediate, "SYNCHRONOUS_COMMIT": False},
        ),
        (
            "taskstate background, SYNCHRONOUS_COMMIT=False",
            [StateMiddleware()],
            tracked,
            {**background, "SYNCHRONOUS_COMMIT": False},
        ),
        ("AdminMiddleware", [AdminMiddleware()], {}, immediate),
    ]
    if args.core:
        variants = [v for v in variants if "SYNCHRONOUS_COMMIT" not in v[0]]
    what = (
        "worker time alone (sent while paused; the senders' writes not counted)"
        if args.worker_time
        else "whole lifecycles (send + process + state written)"
    )
    print(
        f"Worker overhead per message, {what}: {n} messages x {rounds} rounds (median), "
        f"PostgreSQL, StubBroker, {args.threads} worker thread(s), events published to "
        f"Redis\n"
    )
    for conn_max_age, label in (
        (0, "CONN_MAX_AGE=0 (a new database connection per message)"),
        (None, "persistent database connections (CONN_MAX_AGE=None)"),
    ):
        for conn in connections.all():
            conn.settings_dict["CONN_MAX_AGE"] = conn_max_age
            conn.close()
        results = {name: run_variant(name, mw, kw, ts) for name, mw, kw, ts in variants}
        base = results["untracked"][0]
        admin = results["AdminMiddleware"][0]
        rows = [
            [
                name,
                f"{stmts:.2f}",
                f"{looks:.3f}",
                f"{secs * 1e6:,.0f}",
                f"{secs / base:.1f}x",
                f"{secs / admin:.2f}",
            ]
            for name, (secs, stmts, looks) in results.items()
        ]
        print(f"{label}\n")
        headers = [
            "variant",
            "statements / message",
            "of which cancel looks",
            "µs / message",
            "vs untracked",
            "vs AdminMiddleware",
        ]
        print(table(headers, rows))
        print()


if __name__ == "__main__":
    main()
