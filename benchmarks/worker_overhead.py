"""Worker overhead per message: untracked vs taskstate (background writer, immediate writes)
vs django_dramatiq's AdminMiddleware, then a sustained rate through a real worker process.

Part 1, in process: the same no-op actor, StubBroker, a dramatiq Worker with 1, 8 and 32
threads, persistent and per-message database connections; the cells are interleaved
(each round runs every cell once, in turn). Per cell: the sender's time per message (the
``send()`` calls, with the worker paused), the worker's time per message (processing
the queued messages until the worker is idle), and for the background writer the time
until everything is written. Statements are counted by the server (``pg_stat_statements``
on a private, durable PostgreSQL cluster: BEGIN and COMMIT included; a ``set_config``
prefix that travels with its upsert in one round trip is counted as a statement and
left out of the round trips), commits by the transaction ids the server handed out (a
commit that wrote), and the background writer's change-to-commit delay by the writer.

Part 2, ``rundramatiq``: one worker process (8 threads) on Redis, tracked no-op messages
sent at a fixed rate for a fixed time; statements and commits per message as the server
saw them, the delay from a task's end (``finished_at``, set in the worker's hook) to its
row's write (``updated_at``, set by the batch just before its commit), p50/p99; then an
idle lifecycle (one message at a time).

    python benchmarks/worker_overhead.py                      # 400 messages x 3 rounds, 1000/s x 60 s
    python benchmarks/worker_overhead.py --rate 500 --seconds 60 --skip-cells
    python benchmarks/worker_overhead.py --smoke              # small, for CI
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _setup import django_on_postgres, table

DB_NAME = "taskstate_bench_worker"


class Server:
    """Counts from the server: statements (pg_stat_statements) and written commits."""

    def __init__(self, dsn: str | None) -> None:
        import psycopg

        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True) if dsn else None
        if self.conn is not None:
            self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def sample(self, user: str | None = None) -> tuple[float, float, float]:
        """(statements, set_config prefixes, next transaction id) so far; statements of
        one database role only with ``user``."""
        if self.conn is None:
            return 0, 0, 0
        by_user = (
            "" if user is None else " AND userid = (SELECT oid FROM pg_roles WHERE rolname = %s)"
        )
        statements, prefixes = self.conn.execute(
            # Top-level statements only (a foreign-key check is no round trip); the
            # timeouts' prefix shares its upsert's round trip (taskstate.bounds).
            "SELECT coalesce(sum(calls), 0), coalesce(sum(calls) FILTER (WHERE query LIKE "
            "'SELECT set_config($1, $2, $3), set_config($4, $5, $6)'), 0) "
            "FROM pg_stat_statements WHERE toplevel "
            "AND dbid = (SELECT oid FROM pg_database WHERE datname = %s)" + by_user,
            [DB_NAME] if user is None else [DB_NAME, user],
        ).fetchone()
        (xid,) = self.conn.execute(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        ).fetchone()
        return float(statements), float(prefixes), float(xid)

    def top(self, limit: int = 12) -> None:
        """Print the statements the server ran most often (all cells together)."""
        if self.conn is None:
            return
        rows = self.conn.execute(
            "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_statements "
            "WHERE toplevel AND dbid = (SELECT oid FROM pg_database WHERE datname = %s) "
            "ORDER BY calls DESC LIMIT %s",
            [DB_NAME, limit],
        ).fetchall()
        print("Statements the server ran most often (all cells):\n")
        print(table(["calls", "statement"], [[c, f"`{q}`"] for c, q in rows]))
        print()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,8,32")
    parser.add_argument("--rate", type=float, default=1000.0, help="sustained run: messages/s")
    parser.add_argument("--seconds", type=float, default=60.0, help="sustained run: duration")
    parser.add_argument("--skip-cells", action="store_true", help="only the sustained run")
    parser.add_argument("--skip-sustained", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.messages, args.rounds, args.threads = 20, 1, "1,8"
        args.rate, args.seconds = 50.0, 2.0

    from tests.support.faults import PostgresServer, postgres_unavailable

    pg = None
    if postgres_unavailable() is None:
        pg = PostgresServer(
            durable=True,
            extra="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.max=20000",
        )
        os.environ["PGHOST"], os.environ["PGPORT"] = "127.0.0.1", str(pg.port)
    else:
        print(f"No private PostgreSQL ({postgres_unavailable()}): statements not counted.\n")
    try:
        django_on_postgres(DB_NAME)
        server = Server(pg.dsn() if pg else None)
        if not args.skip_cells:
            cells(args, server)
        if not args.skip_sustained:
            sustained(args, server)
    finally:
        if pg is not None:
            from django.db import connections

            connections.close_all()
            pg.close()


# --- part 1: in-process cells ------------------------------------------------------------------


def cells(args: argparse.Namespace, server: Server) -> None:
    import dramatiq
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connections
    from django_dramatiq.middleware import AdminMiddleware, DbConnectionsMiddleware
    from django_dramatiq.models import Task as AdminTask
    from dramatiq.brokers.stub import StubBroker

    from taskstate.conf import get_settings
    from taskstate.courier import courier
    from taskstate.middleware import StateMiddleware
    from taskstate.models import Task
    from taskstate.writer import writer

    user, _ = get_user_model().objects.get_or_create(username="bench")
    tracked = {"for_state": {"user_pk": user.pk, "description": "bench"}}
    variants: list[tuple[str, Any, dict[str, Any], str]] = [
        ("untracked", StateMiddleware, {}, "background"),
        ("taskstate, background writer", StateMiddleware, tracked, "background"),
        ("taskstate, immediate writes", StateMiddleware, tracked, "immediate"),
        ("AdminMiddleware", AdminMiddleware, {}, "immediate"),
    ]
    thread_counts = [int(x) for x in args.threads.split(",")]
    modes = [("persistent", None), ("per-message", 0)]
    results: dict[tuple[str, int, str], list[dict[str, float]]] = {}

    def run(
        name: str, middleware: Any, kwargs: dict[str, Any], mode: str, threads: int
    ) -> dict[str, float]:
        settings.TASKSTATE = {"WRITE_MODE": mode}
        get_settings.cache_clear()  # a plain assignment sends no setting_changed
        broker = StubBroker(middleware=[middleware(), DbConnectionsMiddleware()])
        broker.emit_after("process_boot")

        def noop(**_: Any) -> None:
            return None

        actor = dramatiq.actor(noop, broker=broker, actor_name=f"noop_{id(broker)}")
        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=10)
        worker.start()
        try:
            for _ in range(max(20, threads)):  # warm-up: connections, templates
                actor.send(**kwargs)
            broker.join(actor.queue_name)
            worker.join()
            writer.flush(60)
            courier.flush(60)
            Task.objects.all().delete()
            AdminTask.tasks.all().delete()
            writer.delays.clear()
            n = args.messages
            before = server.sample()
            worker.pause()
            start = time.perf_counter()
            for _ in range(n):
                actor.send(**kwargs)
            sent = time.perf_counter()
            worker.resume()
            broker.join(actor.queue_name)
            worker.join()
            processed = time.perf_counter()
            writer.flush(60)
            written = time.perf_counter()
            after = server.sample()
            courier.flush(60)
        finally:
            worker.stop()
        delays = list(writer.delays) if mode == "background" and kwargs else []
        return {
            "send": (sent - start) / n,
            "worker": (processed - sent) / n,
            "written": (written - sent) / n,
            "statements": (after[0] - before[0]) / n,
            "trips": (after[0] - before[0] - (after[1] - before[1])) / n,
            "commits": (after[2] - before[2]) / n,
            "p50": percentile(delays, 50) * 1000 if delays else float("nan"),
            "p99": percentile(delays, 99) * 1000 if delays else float("nan"),
        }

    hooks = hook_cost(200 if args.smoke else 5000)
    for _ in range(args.rounds):
        for label, age in modes:
            for conn in connections.all():
                conn.settings_dict["CONN_MAX_AGE"] = age
                conn.close()
            for threads in thread_counts:
                for name, middleware, kwargs, mode in variants:
                    cell = run(name, middleware, kwargs, mode, threads)
                    results.setdefault((name, threads, label), []).append(cell)

    print(
        f"## Worker overhead: {args.messages} messages x {args.rounds} interleaved rounds "
        "(median), private PostgreSQL 15 (durable: fsync and synchronous commit on), "
        "StubBroker, in-process worker, events published to Redis\n"
    )
    headers = [
        "variant",
        "threads",
        "sender µs/msg",
        "worker µs/msg",
        "until written µs/msg",
        "worker vs untracked",
        "worker vs AdminMiddleware",
        "statements/msg",
        "round trips/msg",
        "commits/msg",
        "change→commit p50/p99 ms",
    ]
    print(
        f"The worker's hooks alone (before_process_message, after_process_message, "
        f"after_ack; changes queued, nothing written meanwhile): {hooks:.1f} µs per tracked "
        "lifecycle\n"
    )
    for label, _ in modes:
        rows = []
        for threads in thread_counts:
            med = {
                name: {
                    key: statistics.median(c[key] for c in results[(name, threads, label)])
                    for key in results[(name, threads, label)][0]
                }
                for name, *_ in variants
            }
            base = med["untracked"]["worker"]
            admin = med["AdminMiddleware"]["worker"]
            for name, *_ in variants:
                m = med[name]
                delay = "" if m["p50"] != m["p50"] else f"{m['p50']:.1f} / {m['p99']:.1f}"
                rows.append(
                    [
                        name,
                        threads,
                        f"{m['send'] * 1e6:,.0f}",
                        f"{m['worker'] * 1e6:,.0f}",
                        f"{m['written'] * 1e6:,.0f}",
                        f"{m['worker'] / base:.1f}x",
                        f"{m['worker'] / admin:.2f}",
                        f"{m['statements']:.2f}",
                        f"{m['trips']:.2f}",
                        f"{m['commits']:.2f}",
                        delay,
                    ]
                )
        connections_text = (
            "persistent connections (CONN_MAX_AGE=None)"
            if label == "persistent"
            else "a new connection per message (CONN_MAX_AGE=0)"
        )
        print(f"### {connections_text}\n")
        print(table(headers, rows))
        print()
    settings.TASKSTATE = {}
    get_settings.cache_clear()
    server.top()
    for conn in connections.all():
        conn.settings_dict["CONN_MAX_AGE"] = 0
        conn.close()


def hook_cost(n: int) -> float:
    """µs per lifecycle spent in StateMiddleware's worker hooks with the background writer."""
    import dramatiq
    from django.conf import settings
    from dramatiq.broker import MessageProxy

    from taskstate.conf import get_settings
    from taskstate.middleware import StateMiddleware
    from taskstate.models import Task
    from taskstate.writer import writer

    settings.TASKSTATE = {"WRITE_MAX_DELAY": 3600}  # written after the timing, by the flush
    get_settings.cache_clear()
    middleware = StateMiddleware()
    broker = dramatiq.get_broker()
    messages = [
        MessageProxy(
            dramatiq.Message(
                queue_name="default",
                actor_name="noop",
                args=(),
                kwargs={"for_state": {"description": "hooks"}},
                options={},
            )
        )
        for _ in range(n)
    ]
    start = time.perf_counter()
    for message in messages:
        middleware.before_process_message(broker, message)
        middleware.after_process_message(broker, message, result=None)
        middleware.after_ack(broker, message)
    elapsed = time.perf_counter() - start
    writer.flush(60)
    settings.TASKSTATE = {}
    get_settings.cache_clear()
    Task.objects.all().delete()
    return elapsed / n * 1e6


# --- part 2: a real worker process at a sustained rate -----------------------------------------


def sustained(args: argparse.Namespace, server: Server) -> None:
    import dramatiq
    from django.contrib.auth import get_user_model
    from django.db import connections

    from taskstate.models import Task
    from tests.support.processes import child_env, start_worker
    from tests.testapp import tasks as actors

    user, _ = get_user_model().objects.get_or_create(username="bench")
    # The worker process connects as a role of its own: its statements are told apart.
    worker_role = "bench_worker"
    if server.conn is not None:
        exists = server.conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [worker_role])
        if not exists.fetchone():
            server.conn.execute(f"CREATE ROLE {worker_role} SUPERUSER LOGIN")
    env = child_env(
        DJANGO_SETTINGS_MODULE="tests.settings",
        TASKSTATE_TEST_SERVICES="1",
        TASKSTATE_TEST_DB_NAME=DB_NAME,
        PGUSER=worker_role if server.conn is not None else os.environ.get("PGUSER", "postgres"),
    )
    broker = dramatiq.get_broker()
    broker.flush_all()
    Task.objects.all().delete()
    worker = start_worker(env, threads=8)
    try:
        for_state = {"user_pk": user.pk, "description": "sustained"}
        # Warm-up: the worker's connections and templates.
        warm = [actors.noop.send(for_state=for_state) for _ in range(50)]
        wait_rows(Task, [m.message_id for m in warm], 60)
        Task.objects.all().delete()

        total = int(args.rate * args.seconds)
        senders = 8
        sent: list[str] = []
        lock = threading.Lock()
        before = server.sample()
        worker_before = server.sample(worker_role)
        start = time.monotonic()

        def send(index: int) -> None:
            mine = []
            for k in range(index, total, senders):
                due = start + k / args.rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                mine.append(actors.noop.send(for_state=for_state).message_id)
            connections.close_all()
            with lock:
                sent.extend(mine)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        send_seconds = time.monotonic() - start
        polls = wait_rows(Task, sent, 600)
        settled = time.monotonic() - start
        after = server.sample()
        worker_after = server.sample(worker_role)
        connections.close_all()
        delays = [
            (task.updated_at - task.finished_at).total_seconds() * 1000
            for task in Task.objects.filter(message_id__in=sent).only("updated_at", "finished_at")
        ]
        n = len(sent)
        statements = (after[0] - before[0] - polls) / n
        commits = (after[2] - before[2]) / n
        worker_statements = (worker_after[0] - worker_before[0]) / n
        worker_trips = (
            worker_after[0] - worker_before[0] - (worker_after[1] - worker_before[1])
        ) / n
        # Every send() commits its own row once: the rest are the worker's commits.
        worker_commits = commits - 1
        # Idle: one message at a time, the whole lifecycle alone in its batches.
        idle_n = 5 if args.smoke else 20
        Task.objects.all().delete()
        connections.close_all()
        idle_before = server.sample()
        idle_worker_before = server.sample(worker_role)
        idle_polls = 0
        for _ in range(idle_n):
            message = actors.noop.send(for_state=for_state)
            idle_polls += wait_rows(Task, [message.message_id], 30)
            time.sleep(0.05)
        connections.close_all()
        idle_after = server.sample()
        idle_worker_after = server.sample(worker_role)
        idle_worker_trips = (
            idle_worker_after[0]
            - idle_worker_before[0]
            - (idle_worker_after[1] - idle_worker_before[1])
        ) / idle_n
        idle_statements = (idle_after[0] - idle_before[0] - idle_polls) / idle_n
        idle_trips = (
            idle_after[0] - idle_before[0] - idle_polls - (idle_after[1] - idle_before[1])
        ) / idle_n
        idle_commits = (idle_after[2] - idle_before[2]) / idle_n
    finally:
        worker.stop()
    print(
        f"## Sustained rate: rundramatiq (1 process, 8 threads, background writer defaults) on "
        f"Redis, tracked no-op messages from 8 sender threads, target {args.rate:,.0f}/s for "
        f"{args.seconds:.0f} s\n"
    )
    rows = [
        ["messages sent", f"{n:,}"],
        ["send rate achieved", f"{n / send_seconds:,.0f}/s"],
        [
            "all rows done after",
            f"{settled:.1f} s ({settled - send_seconds:.1f} s after the last send)",
        ],
        [
            "statements / message, all (server; the sender's upsert and its timeouts' prefix included)",
            f"{statements:.2f}",
        ],
        [
            "statements / round trips per message, the worker process alone",
            f"{worker_statements:.3f} / {worker_trips:.3f}",
        ],
        ["commits / message, all / the worker's", f"{commits:.2f} / {worker_commits:.3f}"],
        [
            "task end → row written, p50 / p99",
            f"{percentile(delays, 50):.1f} / {percentile(delays, 99):.1f} ms",
        ],
        [
            "idle lifecycle (one message at a time), all: statements / round trips / commits",
            f"{idle_statements:.2f} / {idle_trips:.2f} / {idle_commits:.2f}",
        ],
        ["idle lifecycle, the worker's round trips", f"{idle_worker_trips:.2f}"],
    ]
    print(table(["measure", "value"], rows))
    print()


def wait_rows(model: Any, ids: list[str], timeout: float) -> int:
    """Wait until every row of ``ids`` is done; returns the statements it took."""
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        polls += 1
        if model.objects.filter(message_id__in=ids, status="done").count() == len(ids):
            return polls
        if time.monotonic() > deadline:
            raise TimeoutError(f"rows not done after {timeout:.0f} s")
        time.sleep(0.2)


if __name__ == "__main__":
    main()
