"""Worker overhead per message: untracked vs taskstate-tracked vs django_dramatiq's
AdminMiddleware, then a sustained rate through a real ``rundramatiq`` worker process.

Part 1, in process ("cells"): same broker class (StubBroker), same no-op actor, an
in-process dramatiq Worker with each ``--threads`` count, a new database connection per
message and persistent connections, taskstate's background writer (whose acks wait for
the message's final change to commit) and the same with acks not held (the difference
being what the guarantee "an acked message has its final row" costs), and tracked
messages without an owner, whose rows no page shows (the difference being what
rendering and publishing each row costs). The cells are
interleaved: each round runs every (connection mode, threads, variant) cell once, in
turn, and the tables show each cell's median over the rounds. Per cell: statements as
the client sent them (every connection of the process, the background writer's thread
included; BEGIN and COMMIT are not statements to the client) and the cancel reads among
them, the time per message (whole lifecycles: send + process + state written; with
``--worker-time`` the worker alone, and what each ``send()`` cost the sender, its
synchronous ``enqueued`` upsert included), the CPU time per message of the process's threads
(psutil: the worker's and main threads; the background writer; the courier, which
renders and publishes rows), and, as the server saw them: statements (BEGIN,
COMMIT and savepoints included, and Django's ``set_config('TimeZone', ...)`` on each new
connection), round trips (the statements less the timeouts' ``set_config`` prefix, which
travels with its upsert in one string, one round trip) and commits (transaction ids
handed out: a commit that wrote). The foreign-key checks PostgreSQL runs at commit
(Django's constraints are deferred) are filed as top-level statements by
pg_stat_statements; no client sent them, they are left out.

Part 2, sustained: one ``rundramatiq`` process (8 threads, default settings: background
writer) on Redis, tracked no-op messages sent at ``--rate`` for ``--seconds`` from 8
sender threads. Reports the send rate achieved; statements, round trips and commits per
message as the server saw them, all and the worker process alone (it connects as a
database role of its own); the delay from a task's end (``finished_at``, set in the
worker's hook) to its row's write (``updated_at``, set when the batch is built, just
before its statement and commit) and to that write's commit (the server's commit
timestamp of the row's version), p50/p99; the CPU each process used meanwhile (the
senders, the worker and its busiest threads, PostgreSQL, Redis), which shows where the
machine's limit is; then an idle lifecycle (one message at a time; the target: at most 3
round trips per lifecycle).

Server-side counts come from a private, durable PostgreSQL cluster this script starts
(tests.support.faults.PostgresServer: fsync and synchronous commit on,
``pg_stat_statements``, ``track_commit_timestamp``); it needs root and the server
binaries. Without it (or with ``--shared-db``) everything runs on the shared server at
127.0.0.1:5432 and only the client-side counts are given, as the output says.

    python benchmarks/worker_overhead.py                       # 500 messages x 3 rounds x 36 cells (1/8/32 threads); 1,000/s x 60 s
    python benchmarks/worker_overhead.py --threads 8           # 8 threads
    python benchmarks/worker_overhead.py --worker-time         # the worker alone (sent while paused)
    python benchmarks/worker_overhead.py --worker-time --start-look-cost  # + starts without their cancel read, and with it built by the ORM
    python benchmarks/worker_overhead.py --skip-cells --rate 500 --seconds 60
    python benchmarks/worker_overhead.py --skip-sustained --messages 500 --rounds 5
    python benchmarks/worker_overhead.py --shared-db           # no private cluster: client counts only
    python benchmarks/worker_overhead.py --messages 100 --rounds 1 --rate 200 --seconds 5
    python benchmarks/worker_overhead.py --smoke               # small, for CI (20 messages, 1/8 threads, 50/s x 2 s)

Redis: ``TASKSTATE_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/15): events are
published there, and part 2's queue lives there (flushed first).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _setup import django_on_postgres, table

#: Options of the private cluster: statement counts, commit timestamps, room for 32
#: threads' connections next to leftovers of the previous cell.
SERVER_OPTIONS = (
    "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.max=20000 "
    "-c track_commit_timestamp=on -c max_connections=300"
)
#: The timeouts' prefix of a tracking write (taskstate.core.transitions._with_bounds), as
#: pg_stat_statements normalises it: two or three set_config calls, sent in one string
#: with the upsert. Django's own "SELECT set_config('TimeZone', ...)" on connecting is one
#: call, a round trip of its own, and does not match.
PREFIX = "SELECT set_config($1, $2, $3), set_config(%"
#: Statements a client sent. Django's foreign keys are DEFERRABLE INITIALLY DEFERRED: their
#: checks (``SELECT 1 FROM ONLY ... OPERATOR(pg_catalog.=) ... FOR KEY SHARE OF x``) run
#: at commit, outside any statement, and pg_stat_statements files them as top-level.
#: (Written for psycopg with parameters: %% is a %.)
CLIENT_SENT = (
    "toplevel AND NOT (query LIKE 'SELECT %% FROM ONLY %%' "
    "AND query LIKE '%%OPERATOR(pg_catalog.%%' AND query LIKE '%%FOR KEY SHARE OF x')"
)
#: Savepoint names differ per transaction (AdminMiddleware's atomic blocks).
SAVEPOINT_NAME = re.compile(r'"s\d+_x\d+"')
#: A variant's marker (not a setting): its starts answer from a recent look, no read.
RECENT_LOOK = "_start_trusts_a_recent_look"
#: A variant's marker (not a setting): its starts' reads are built by the ORM each time.
ORM_READ = "_start_read_built_by_the_orm"
#: A variant's marker (not a setting): every write waits for the disk, as a final one.
ALL_DURABLE = "_every_write_durable"
#: The database role of the sustained part's worker process.
WORKER_ROLE = "bench_worker"


class Counter:
    """Client side: every statement this process's connections execute."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        with self.lock:
            self.count += 1
        return execute(sql, params, many, context)


def thread_cpu() -> dict[str, float]:
    """CPU seconds used so far by this process's threads, by role: the background
    writer, the courier (renders and publishes rows), and the rest (the worker's threads,
    the consumer, the main thread)."""
    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    roles = {"taskstate-writer": "writer", "taskstate-courier": "courier"}
    used: dict[str, float] = {"writer": 0.0, "courier": 0.0, "rest": 0.0}
    for t in psutil.Process().threads():
        role = roles.get(names.get(t.id, ""), "rest")
        used[role] += t.user_time + t.system_time
    return used


class ProcessCpu:
    """CPU seconds of the processes that share the machine in the sustained part: this
    one (the senders), the worker's (``rundramatiq`` and its children; each thread of
    them), PostgreSQL's and Redis's. Threads of another process have no names to read:
    they are listed by CPU, the busiest first."""

    def __init__(self, worker_pid: int) -> None:
        import psutil

        self.psutil = psutil
        self.worker = psutil.Process(worker_pid)
        self.start = (time.monotonic(), self._read())

    def _processes(self) -> dict[str, list[Any]]:
        found: dict[str, list[Any]] = {"senders (this process)": [self.psutil.Process()]}
        found["worker (rundramatiq and children)"] = [
            self.worker,
            *self.worker.children(recursive=True),
        ]
        for p in self.psutil.process_iter(["name"]):
            name = p.info["name"] or ""
            if name.startswith(("postgres", "postmaster")):
                found.setdefault("PostgreSQL (every backend)", []).append(p)
            elif name.startswith("redis-server"):
                found.setdefault("Redis", []).append(p)
        return found

    def _read(self) -> dict[Any, float]:
        used: dict[Any, float] = {}
        for role, processes in self._processes().items():
            for p in processes:
                try:
                    times = p.cpu_times()
                    used[(role, p.pid)] = times.user + times.system
                    if role.startswith("worker"):
                        for t in p.threads():
                            used[("thread", p.pid, t.id)] = t.user_time + t.system_time
                except self.psutil.Error:
                    continue
        return used

    def table(self) -> str:
        began, before = self.start
        seconds = time.monotonic() - began
        after = self._read()
        spent = {key: after[key] - before.get(key, 0.0) for key in after}
        roles: dict[str, float] = {}
        for key, value in spent.items():
            if key[0] != "thread":
                roles[key[0]] = roles.get(key[0], 0.0) + value
        rows: list[list[object]] = [
            [role, f"{used:.1f}", f"{100 * used / seconds:.0f} %"] for role, used in roles.items()
        ]
        threads = sorted((v for k, v in spent.items() if k[0] == "thread"), reverse=True)
        for rank, used in enumerate(threads[:6], 1):
            rows.append(
                [f"worker's busiest thread #{rank}", f"{used:.1f}", f"{100 * used / seconds:.0f} %"]
            )
        total = sum(roles.values())
        rows.append(["all of the above", f"{total:.1f}", f"{100 * total / seconds:.0f} %"])
        header = f"CPU from the first send until every row was done ({seconds:.1f} s)"
        return table([header, "CPU s", "of one core"], rows)


class Sample(NamedTuple):
    statements: float  # statements the server ran in the database, sent by a client
    prefixes: float  # of which timeouts' prefixes (no round trip of their own)
    xid: float  # the next transaction id: a difference counts the commits that wrote
    evicted: float  # pg_stat_statements entries evicted since its reset


def _normalised(query: str) -> str:
    """The statement's beginning: the multi-row upserts of batches of different sizes
    are different statements to pg_stat_statements, one here."""
    query = SAVEPOINT_NAME.sub('"s…"', " ".join(query.split()))
    return query if len(query) <= 110 else query[:110] + "…"


class Server:
    """Server side: pg_stat_statements and transaction ids of the private cluster.

    A measured window starts with :meth:`reset` (what pg_stat_statements holds is
    forgotten, so that its table does not fill up with AdminMiddleware's savepoint
    names and evict entries), then :meth:`sample`, and ends with :meth:`sample` and
    :meth:`collect` (kept for :meth:`top`).
    """

    def __init__(self, dsn: str | None, db: str, missing: str = "") -> None:
        self.db = db
        self.missing = missing  # why nothing is counted
        self.conn: Any = None
        self.seen: collections.Counter[tuple[str, str]] = collections.Counter()
        self.evicted = False
        if dsn is not None:
            import psycopg

            # In the ``postgres`` database: these reads are not counted with the benchmark's.
            self.conn = psycopg.connect(dsn, autocommit=True)
            self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    @property
    def counting(self) -> bool:
        return self.conn is not None

    def reset(self) -> None:
        if self.conn is not None:
            self.conn.execute("SELECT pg_stat_statements_reset()")

    def sample(self, role: str | None = None) -> Sample:
        """Counts so far; the statements of one database role only with ``role`` (the
        transaction id is the cluster's, whoever took it)."""
        if self.conn is None:
            return Sample(0.0, 0.0, 0.0, 0.0)
        by_role = "" if role is None else " AND rolname = %s"
        statements, prefixes = self.conn.execute(
            "SELECT coalesce(sum(calls), 0), coalesce(sum(calls) FILTER (WHERE query LIKE %s), 0) "
            "FROM pg_stat_statements JOIN pg_roles ON pg_roles.oid = userid "
            f"WHERE {CLIENT_SENT} "
            "AND dbid = (SELECT oid FROM pg_database WHERE datname = %s)" + by_role,
            [PREFIX, self.db] if role is None else [PREFIX, self.db, role],
        ).fetchone()
        (xid,) = self.conn.execute(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
        ).fetchone()
        (evicted,) = self.conn.execute("SELECT dealloc FROM pg_stat_statements_info").fetchone()
        return Sample(float(statements), float(prefixes), float(xid), float(evicted))

    def check(self, before: Sample, after: Sample) -> None:
        if after.evicted > before.evicted:
            self.evicted = True

    def collect(self) -> None:
        """Keep what the server ran since the reset, by role and statement, for :meth:`top`."""
        if self.conn is None:
            return
        rows = self.conn.execute(
            "SELECT rolname, query, calls FROM pg_stat_statements "
            "JOIN pg_roles ON pg_roles.oid = userid "
            f"WHERE {CLIENT_SENT} AND dbid = (SELECT oid FROM pg_database WHERE datname = %s)",
            [self.db],
        ).fetchall()
        for role, query, calls in rows:
            self.seen[(role, _normalised(query))] += calls

    def create_role(self, role: str) -> None:
        if self.conn is None:
            return
        if not self.conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            self.conn.execute(f"CREATE ROLE {role} SUPERUSER LOGIN")

    def top(self, what: str, limit: int = 15) -> None:
        """Print the statements the server ran most often in the windows collected since
        the last call, then forget them."""
        if self.conn is None:
            return
        rows = [
            [calls, role, f"`{query}`"] for (role, query), calls in self.seen.most_common(limit)
        ]
        print(f"Statements the server ran most often ({what}):\n")
        print(table(["calls", "role", "statement"], rows))
        print()
        if self.evicted:
            print(
                "WARNING: pg_stat_statements evicted entries during a measured window: "
                "the server-side statement counts above are too low.\n"
            )
        self.seen.clear()
        self.evicted = False


class Counts(NamedTuple):
    """Per message, as the server saw them, between two samples."""

    statements: float
    trips: float
    commits: float


def per_message(before: Sample, after: Sample, n: int, ours: float = 0.0) -> Counts:
    """``ours``: statements of this script's own (polls) to leave out."""
    statements = after.statements - before.statements - ours
    trips = statements - (after.prefixes - before.prefixes)
    return Counts(statements / n, trips / n, (after.xid - before.xid) / n)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="small and fast, for CI")
    parser.add_argument("--messages", type=int, default=500, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads", default="1,8,32", help="worker threads, a comma-separated list: 1,8,32"
    )
    parser.add_argument(
        "--db", default="taskstate_bench_worker", help="PostgreSQL database (dropped first)"
    )
    parser.add_argument(
        "--worker-time",
        action="store_true",
        help="time the worker alone: send each round while the worker is paused, then "
        "time from resume until every message is processed and its state written",
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="sustained: messages/s")
    parser.add_argument("--seconds", type=float, default=60.0, help="sustained: duration")
    parser.add_argument("--skip-cells", action="store_true", help="only the sustained part")
    parser.add_argument("--skip-sustained", action="store_true", help="only the cells")
    parser.add_argument(
        "--hooks",
        action="store_true",
        help="only the hooks part: µs per lifecycle in StateMiddleware's worker hooks",
    )
    parser.add_argument(
        "--start-look-cost",
        action="store_true",
        help="with the cells: also background writes whose start answers from a look of "
        "the last CANCEL_CHECK_INTERVAL (no read per start; a cancel the owner saw may "
        "start its body): the cost of the start's own look; and background writes whose "
        "start's read is built by the ORM each time: what its fixed text saves",
    )
    parser.add_argument(
        "--shared-db",
        action="store_true",
        help="no private cluster: the shared PostgreSQL, client-side counts only",
    )
    args = parser.parse_args()
    if args.smoke:
        args.messages, args.rounds, args.threads = 20, 1, "1,8"
        args.rate, args.seconds = 50.0, 2.0
    try:
        args.thread_counts = [int(t) for t in str(args.threads).split(",") if t.strip()]
    except ValueError:
        parser.error(f"--threads: comma-separated integers, not {args.threads!r}")
    if not args.thread_counts or min(args.thread_counts) < 1:
        parser.error("--threads: at least one count, each 1 or more")

    from tests.support.faults import PostgresServer, postgres_unavailable

    pg = None
    missing = "--shared-db" if args.shared_db else postgres_unavailable()
    if missing is None:
        try:
            pg = PostgresServer(durable=True, extra=SERVER_OPTIONS)
        except Exception as exc:
            missing = f"the private cluster did not start: {str(exc).strip()[:300]}"
    if pg is not None:
        # Read by benchmarks/_setup.py (libpq), tests/settings.py and the worker process.
        os.environ["PGHOST"], os.environ["PGPORT"] = "127.0.0.1", str(pg.port)
        print(
            f"Private PostgreSQL cluster on port {pg.port} (durable: fsync and synchronous "
            "commit on): statements, round trips and commits counted by the server.\n"
        )
    else:
        print(
            f"No private PostgreSQL ({missing}): the shared server at 127.0.0.1:5432, and "
            "client-side counts only (no BEGIN/COMMIT, no commits, not the worker process's "
            "statements); the server-side columns read n/a.\n"
        )
    try:
        django_on_postgres(args.db)
        server = Server(pg.dsn() if pg is not None else None, args.db, missing or "")
        if args.hooks or args.smoke:
            hooks(200 if args.smoke else 2000, 1 if args.smoke else 5)
        if args.hooks:
            return
        if not args.skip_cells:
            cells(args, server)
        if not args.skip_sustained:
            sustained(args, server)
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if pg is not None:
            pg.close()


class ReadCount:
    """Counts the cancel watch's reads (``taskstate.worker.writer.cancels_since``) while installed."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def installed(self) -> Any:
        from taskstate.worker import writer as writer_module

        read = writer_module.cancels_since

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return read(*args, **kwargs)

        writer_module.cancels_since = counted
        try:
            yield self
        finally:
            writer_module.cancels_since = read


def orm_cancels_since(since: Any, connection: Any = None) -> list[str] | None:
    """``transitions.cancels_since`` with its read built and compiled by the ORM on every
    call (the ``ORM_READ`` variant): what the fixed text saves."""
    from datetime import timedelta

    from django.db.models import F, Q
    from django.utils import timezone

    from taskstate.core.bounds import bounded
    from taskstate.core.models import Task
    from taskstate.core.states import ACTIVE_STATUSES
    from taskstate.core.transitions import CANCEL_LOOK_OVERLAP

    rows = Task.objects.filter(cancel_requested_at__isnull=False)
    if since is not None:
        rows = rows.filter(cancel_requested_at__gte=since - timedelta(seconds=CANCEL_LOOK_OVERLAP))
    else:
        rows = rows.filter(
            Q(status__in=ACTIVE_STATUSES)
            | Q(due_at__isnull=False, finished_at__lt=F("due_at"))
            | Q(cancel_requested_at__gte=timezone.now() - timedelta(days=1))
        )
    query = rows.order_by().values_list("message_id", flat=True)
    try:
        with bounded(connection):
            sql, params = query.query.get_compiler(connection=connection).as_sql()
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return [row[0] for row in cursor.fetchall()]
    except Exception:
        connection.close()
        return None


# --- part 0: the hooks alone ------------------------------------------------------------------


def hooks(n: int, rounds: int) -> None:
    """µs per lifecycle spent in StateMiddleware's worker hooks (before_process_message,
    after_process_message, before_ack and after_ack: what the actor's thread pays), tracked
    with the background writer against untracked messages through the same hooks;
    interleaved, median of ``rounds``. The writer's delay is set to an hour so nothing is
    written while timing (a flush writes it after): the ack does not wait for the final
    change here (the cells measure that wait); the cancel watch is fresh, as it is under
    load (a worker reads only when it is older than CANCEL_CHECK_INTERVAL)."""
    import dramatiq
    from django.contrib.auth import get_user_model
    from dramatiq.broker import MessageProxy
    from dramatiq.brokers.stub import StubBroker

    from taskstate.core import conf
    from taskstate.core.models import Task
    from taskstate.web.courier import courier
    from taskstate.worker.middleware import StateMiddleware
    from taskstate.worker.writer import cancels, writer

    user, _ = get_user_model().objects.get_or_create(username="bench")
    broker = StubBroker()
    middleware = ack_not_held(StateMiddleware)()

    def lifecycles(kwargs: dict[str, Any]) -> float:
        messages = [
            MessageProxy(
                dramatiq.Message(
                    queue_name="default", actor_name="noop", args=(), kwargs=kwargs, options={}
                )
            )
            for _ in range(n)
        ]
        cancels.refresh()
        start = time.perf_counter()
        for message in messages:
            middleware.before_process_message(broker, message)
            middleware.after_process_message(broker, message, result=None)
            middleware.before_ack(broker, message)
            middleware.after_ack(broker, message)
        elapsed = (time.perf_counter() - start) / n
        # Written and published now, before the next timed loop.
        assert writer.flush(120), "the background writer did not drain"
        courier.flush(120)
        return elapsed

    fixed = (conf.WRITE_MAX_DELAY, conf.WRITE_BATCH_SIZE, conf.CANCEL_CHECK_INTERVAL)
    conf.WRITE_MAX_DELAY, conf.WRITE_BATCH_SIZE, conf.CANCEL_CHECK_INTERVAL = 3600, n + 1, 3600
    tracked = {"for_state": {"user_pk": user.pk, "description": "hooks"}}
    times: dict[str, list[float]] = {"untracked": [], "tracked, background writer": []}
    reads = ReadCount()
    try:
        with reads.installed():
            lifecycles(tracked)  # warm-up
            for _ in range(rounds):
                times["untracked"].append(lifecycles({}))
                times["tracked, background writer"].append(lifecycles(tracked))
    finally:
        conf.WRITE_MAX_DELAY, conf.WRITE_BATCH_SIZE, conf.CANCEL_CHECK_INTERVAL = fixed
        assert writer.flush(120), "the background writer did not drain"
        courier.flush(120)
        Task.objects.all().delete()
    base = statistics.median(times["untracked"])
    print(
        f"## The worker's hooks alone: {n:,} lifecycles x {rounds} interleaved round(s) "
        "(median), StateMiddleware's before_process_message + after_process_message + "
        "before_ack + after_ack, no actor, nothing written while timing (the ack not held "
        "for the commit)\n"
    )
    rows = [
        [name, f"{statistics.median(v) * 1e6:.1f}", f"{statistics.median(v) / base:.1f}x"]
        for name, v in times.items()
    ]
    print(table(["messages", "µs / lifecycle in the hooks", "vs untracked"], rows))
    print(
        f"\nCancel-watch reads while timing: {reads.count - 2 * rounds - 1} (besides "
        "the one fresh read before each timed loop).\n"
    )


def ack_not_held(middleware: type[Any]) -> type[Any]:
    """``StateMiddleware`` whose acks do not wait for the final change's commit: the
    writer's batching without the guarantee, to show what the guarantee costs."""

    class AckNotHeld(middleware):  # type: ignore[misc, valid-type]
        def _hold_ack(self, message: Any) -> None:
            return None

    return AckNotHeld


# --- part 1: in-process cells, interleaved ------------------------------------------------


def cells(args: argparse.Namespace, server: Server) -> None:
    import dramatiq
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connections
    from django.db.backends.signals import connection_created
    from django_dramatiq.middleware import AdminMiddleware, DbConnectionsMiddleware
    from django_dramatiq.models import Task as AdminTask
    from dramatiq.brokers.stub import StubBroker

    from taskstate.core import transitions
    from taskstate.core.conf import get_settings
    from taskstate.core.models import Task
    from taskstate.web.courier import courier
    from taskstate.worker import writer as writer_module
    from taskstate.worker.middleware import StateMiddleware
    from taskstate.worker.writer import cancels, writer

    fixed_read = writer_module.cancels_since
    real_write_batch = transitions.write_batch
    counter = Counter()

    def install(sender: Any = None, connection: Any = None, **kwargs: Any) -> None:
        # connection_created fires again on every reconnect of the same wrapper object.
        if counter not in connection.execute_wrappers:
            connection.execute_wrappers.append(counter)

    connection_created.connect(install, weak=False)
    for conn in connections.all(initialized_only=True):
        install(connection=conn)

    user, _ = get_user_model().objects.get_or_create(username="bench")
    n = args.messages

    def run_cell(
        middleware: type[Any], kwargs: dict[str, Any], taskstate: dict[str, Any], threads: int
    ) -> dict[str, float]:
        taskstate = dict(taskstate)
        if taskstate.pop(RECENT_LOOK, False):
            # The start answers as a running message's look does (CancelWatch.requested).
            cancels.heard_of = cancels.requested  # type: ignore[method-assign]
        if taskstate.pop(ORM_READ, False):
            writer_module.cancels_since = orm_cancels_since
        if taskstate.pop(ALL_DURABLE, False):
            # The sender's rows and the writer's running/progress batches wait for the
            # disk too: what not waiting for them saves is the difference to the row above.
            def durable(changes: Any, **_: Any) -> Any:
                return real_write_batch(changes, durable=True)

            transitions.write_batch = writer_module.write_batch = durable
        reads = ReadCount()
        counting = contextlib.ExitStack()
        counting.enter_context(reads.installed())
        settings.TASKSTATE = taskstate
        get_settings.cache_clear()  # assigned, not override_settings: no setting_changed
        broker = StubBroker(middleware=[middleware(), DbConnectionsMiddleware()])
        broker.emit_after("process_boot")

        def noop(**_: Any) -> None:
            return None

        actor = dramatiq.actor(noop, broker=broker, actor_name=f"noop_{id(broker)}")
        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=10)
        worker.start()
        try:
            # warm-up: connections, template cache
            for _ in range(max(20, threads)):
                actor.send(**kwargs)
            broker.join(actor.queue_name)
            worker.join()
            writer.flush(30)
            courier.flush(30)
            Task.objects.all().delete()
            AdminTask.tasks.all().delete()
            server.reset()
            before, server_before, looks = counter.count, server.sample(), reads.count
            cpu_before = thread_cpu()
            sending = float("nan")
            if args.worker_time:
                worker.pause()
                sent_at = time.perf_counter()
                for _ in range(n):
                    actor.send(**kwargs)
                sending = time.perf_counter() - sent_at
                # the worker's statements only
                before, server_before = counter.count, server.sample()
                cpu_before = thread_cpu()
                start = time.perf_counter()
                worker.resume()
            else:
                start = time.perf_counter()
                for _ in range(n):
                    actor.send(**kwargs)
            broker.join(actor.queue_name)
            worker.join()
            idle = time.perf_counter()
            assert writer.flush(30), "the background writer did not drain"
            elapsed = time.perf_counter() - start
            drain = time.perf_counter() - idle
            # What was timed happened: every tracked message has its final row.
            if kwargs:
                done = Task.objects.filter(status="done").count()
                assert done == n, f"{done} of {n} tracked messages have their final row"
            # Events are published after the timing, but what publishing reads is counted.
            courier.flush(30)
            cpu = {role: used - cpu_before[role] for role, used in thread_cpu().items()}
            server_after = server.sample()
            server.check(server_before, server_after)
            server.collect()
            counts = per_message(server_before, server_after, n)
            return {
                "secs": elapsed / n,
                "send": sending / n,
                "drain": drain,
                "statements": (counter.count - before) / n,
                "looks": (reads.count - looks) / n,
                "server statements": counts.statements,
                "trips": counts.trips,
                "commits": counts.commits,
                "cpu rest": cpu["rest"] / n,
                "cpu writer": cpu["writer"] / n,
                "cpu courier": cpu["courier"] / n,
            }
        finally:
            worker.stop()
            writer.release()
            cancels.__dict__.pop("heard_of", None)
            counting.close()
            writer_module.cancels_since = fixed_read
            transitions.write_batch = writer_module.write_batch = real_write_batch

    tracked = {"for_state": {"user_pk": user.pk, "description": "bench"}}
    background: dict[str, Any] = {}
    variants: list[tuple[str, type[Any], dict[str, Any], dict[str, Any]]] = [
        ("untracked", StateMiddleware, {}, background),
        ("taskstate background", StateMiddleware, tracked, background),
        (
            # No owner, no object: no page shows the rows, so none is rendered or published.
            # What rendering and publishing cost is the difference to the row above.
            "taskstate background, no owner (nothing rendered)",
            StateMiddleware,
            {"for_state": {"description": "bench"}},
            background,
        ),
        (
            "taskstate background, every write durable",
            StateMiddleware,
            tracked,
            {**background, ALL_DURABLE: True},
        ),
        (
            # The acks do not wait for the final change's commit: what the guarantee
            # "an acked message has its final row" costs is the difference to the row above.
            "taskstate background, ack not held",
            ack_not_held(StateMiddleware),
            tracked,
            background,
        ),
        ("AdminMiddleware", AdminMiddleware, {}, background),
    ]
    if args.start_look_cost:
        variants.insert(
            3,
            (
                "taskstate background, start trusts a recent look",
                StateMiddleware,
                tracked,
                {**background, RECENT_LOOK: True},
            ),
        )
        variants.insert(
            3,
            (
                "taskstate background, start read built by the ORM",
                StateMiddleware,
                tracked,
                {**background, ORM_READ: True},
            ),
        )
    modes = [
        ("per-message", 0, "CONN_MAX_AGE=0 (a new database connection per message)"),
        ("persistent", None, "persistent database connections (CONN_MAX_AGE=None)"),
    ]

    results: dict[tuple[str, int, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for mode, conn_max_age, _label in modes:
            # The handler's settings dict is shared by every thread's wrapper.
            for conn in connections.all():
                conn.settings_dict["CONN_MAX_AGE"] = conn_max_age
                conn.close()
            for threads in args.thread_counts:
                for name, middleware, kwargs, taskstate in variants:
                    cell = run_cell(middleware, kwargs, taskstate, threads)
                    results.setdefault((name, threads, mode), []).append(cell)
    settings.TASKSTATE = {}
    get_settings.cache_clear()
    for conn in connections.all():
        conn.settings_dict["CONN_MAX_AGE"] = 0
        conn.close()

    what = (
        "worker time alone (sent while paused; the senders' statements not counted)"
        if args.worker_time
        else "whole lifecycles (send + process + state written)"
    )
    where = (
        "private PostgreSQL (durable)"
        if server.counting
        else f"shared PostgreSQL, no server-side counts ({server.missing})"
    )
    print(
        f"## Worker overhead per message, {what}: {n} messages x {args.rounds} interleaved "
        f"round(s) (median), {where}, StubBroker, in-process worker with "
        f"{'/'.join(map(str, args.thread_counts))} thread(s), events published to Redis\n"
    )
    headers = [
        "variant",
        "threads",
        "statements / message (client)",
        "of which cancel looks",
        "statements / message (server)",
        "round trips / message (server)",
        "commits / message (server)",
        "µs / message",
        "send() µs (sender)",
        "drain after idle ms",
        "CPU µs / message: worker and main threads, writer, courier",
        "vs untracked",
        "vs AdminMiddleware",
    ]

    def server_cell(value: float) -> str:
        return f"{value:.2f}" if server.counting else "n/a"

    for mode, _age, label in modes:
        rows: list[list[object]] = []
        for threads in args.thread_counts:
            med = {
                name: {
                    key: statistics.median(c[key] for c in results[(name, threads, mode)])
                    for key in results[(name, threads, mode)][0]
                }
                for name, *_ in variants
            }
            base = med["untracked"]["secs"]
            admin = med["AdminMiddleware"]["secs"]
            for name, *_ in variants:
                m = med[name]
                rows.append(
                    [
                        name,
                        threads,
                        f"{m['statements']:.2f}",
                        f"{m['looks']:.3f}",
                        server_cell(m["server statements"]),
                        server_cell(m["trips"]),
                        server_cell(m["commits"]),
                        f"{m['secs'] * 1e6:,.0f}",
                        "n/a" if m["send"] != m["send"] else f"{m['send'] * 1e6:,.0f}",
                        f"{m['drain'] * 1e3:.1f}",
                        f"{m['cpu rest'] * 1e6:,.0f}, {m['cpu writer'] * 1e6:,.0f}, "
                        f"{m['cpu courier'] * 1e6:,.0f}",
                        f"{m['secs'] / base:.1f}x",
                        f"{m['secs'] / admin:.2f}",
                    ]
                )
        print(f"### {label}\n")
        print(table(headers, rows))
        print()
    if server.counting:
        print(
            "Server: statements include BEGIN and COMMIT; round trips are the statements "
            "less the timeouts' set_config prefix sent with its upsert; commits are the "
            "transaction ids handed out (a commit that wrote; a rollback that wrote would "
            "count too).\n"
        )
        server.top("the measured windows of every cell together")


# --- part 2: a real worker process at a sustained rate ------------------------------------


def sustained(args: argparse.Namespace, server: Server) -> None:
    import dramatiq
    from django.contrib.auth import get_user_model
    from django.db import connection, connections

    from taskstate.core.models import Task
    from tests.support.processes import child_env, start_worker
    from tests.testapp import tasks as actors

    user, _ = get_user_model().objects.get_or_create(username="bench")
    # The worker process connects as a role of its own: its statements are told apart.
    server.create_role(WORKER_ROLE)
    env = child_env(
        DJANGO_SETTINGS_MODULE="tests.settings",
        TASKSTATE_TEST_SERVICES="1",
        TASKSTATE_TEST_DB_NAME=args.db,
        PGUSER=WORKER_ROLE if server.counting else os.environ.get("PGUSER", "postgres"),
    )
    broker = dramatiq.get_broker()
    broker.flush_all()
    Task.objects.all().delete()
    worker_threads = 8
    worker = start_worker(env, threads=worker_threads)
    try:
        for_state = {"user_pk": user.pk, "description": "sustained"}
        # Warm-up: the worker's connections and templates.
        warm = [actors.noop.send(for_state=for_state) for _ in range(50)]
        wait_rows(Task, [m.message_id for m in warm], 60)
        Task.objects.all().delete()

        total = max(1, int(args.rate * args.seconds))
        senders = 8
        sent: list[str] = []
        lock = threading.Lock()
        server.reset()
        before, worker_before = server.sample(), server.sample(WORKER_ROLE)
        cpu = ProcessCpu(worker.proc.pid)
        start = time.monotonic()

        def send(index: int) -> None:
            mine = []
            for k in range(index, total, senders):
                pause = start + k / args.rate - time.monotonic()
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
        cpu_table = cpu.table()
        after, worker_after = server.sample(), server.sample(WORKER_ROLE)
        server.check(before, after)
        server.collect()
        n = len(sent)
        everything = per_message(before, after, n, ours=polls)
        by_worker = per_message(worker_before, worker_after, n)
        written_ms, committed_ms = delays(connection, Task._meta.db_table, sent, server)

        # Idle: one message at a time, each lifecycle alone in its batches.
        idle_n = 5 if args.smoke else 20
        Task.objects.all().delete()
        connections.close_all()
        server.reset()
        idle_before, idle_worker_before = server.sample(), server.sample(WORKER_ROLE)
        idle_polls = 0
        for _ in range(idle_n):
            message = actors.noop.send(for_state=for_state)
            idle_polls += wait_rows(Task, [message.message_id], 30)
            time.sleep(0.05)
        connections.close_all()
        idle_after, idle_worker_after = server.sample(), server.sample(WORKER_ROLE)
        server.check(idle_before, idle_after)
        server.collect()
        idle = per_message(idle_before, idle_after, idle_n, ours=idle_polls)
        idle_worker = per_message(idle_worker_before, idle_worker_after, idle_n)
    except BaseException:
        print(f"rundramatiq's output:\n{worker.output()}", file=sys.stderr)
        raise
    finally:
        worker.stop()

    print(
        f"## Sustained rate: rundramatiq (1 process, {worker_threads} threads, background "
        f"writer defaults) on Redis, tracked no-op messages from {senders} sender threads, "
        f"target {args.rate:,.0f}/s for {args.seconds:g} s\n"
    )

    def counted(text: str) -> str:
        return text if server.counting else f"n/a ({server.missing})"

    # Each send() commits its own `enqueued` row (one autocommit upsert): the rest of
    # the commits are the worker's. A transaction id is the cluster's, not a role's.
    rows: list[list[object]] = [
        ["messages sent", f"{n:,}"],
        ["send rate achieved", f"{n / send_seconds:,.0f}/s"],
        [
            "all rows done after",
            f"{settled:.1f} s ({settled - send_seconds:.1f} s after the last send)",
        ],
        [
            "statements / round trips / commits per message, all (the sender's upsert included; "
            "the polls of this script left out)",
            counted(
                f"{everything.statements:.2f} / {everything.trips:.2f} / {everything.commits:.2f}"
            ),
        ],
        [
            "statements / round trips / commits per message, the worker process alone "
            "(commits: all less the sender's one)",
            counted(
                f"{by_worker.statements:.3f} / {by_worker.trips:.3f} / {everything.commits - 1:.3f}"
            ),
        ],
        [
            "task end → batch built (updated_at), p50 / p99",
            f"{percentile(written_ms, 50):.1f} / {percentile(written_ms, 99):.1f} ms",
        ],
        [
            "task end → its write committed (commit timestamp), p50 / p99",
            counted(f"{percentile(committed_ms, 50):.1f} / {percentile(committed_ms, 99):.1f} ms"),
        ],
        [
            f"idle lifecycle ({idle_n}, one message at a time), all: statements / round trips "
            "/ commits (target: ≤ 3 round trips)",
            counted(f"{idle.statements:.2f} / {idle.trips:.2f} / {idle.commits:.2f}"),
        ],
        [
            "idle lifecycle, the worker process alone: statements / round trips / commits",
            counted(
                f"{idle_worker.statements:.2f} / {idle_worker.trips:.2f} / {idle.commits - 1:.2f}"
            ),
        ],
    ]
    print(table(["measure", "value"], rows))
    print()
    print(f"Where the machine's {os.cpu_count()} cores went:\n")
    print(cpu_table)
    print()
    server.top(
        f"the sustained and idle windows together; {WORKER_ROLE} is the worker process, the "
        "polls of this script included"
    )


def delays(
    connection: Any, db_table: str, ids: list[str], server: Server
) -> tuple[list[float], list[float]]:
    """Milliseconds from each task's end to its row's ``updated_at`` (set as the batch is
    built) and, with commit timestamps, to the commit of the row's version."""
    committed = (
        "extract(epoch FROM pg_xact_commit_timestamp(xmin) - finished_at) * 1000"
        if server.counting
        else "NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT extract(epoch FROM updated_at - finished_at) * 1000, {committed} "
            f'FROM "{db_table}" WHERE message_id = ANY(%s) AND finished_at IS NOT NULL',
            [ids],
        )
        rows = cursor.fetchall()
    return (
        [float(w) for w, _ in rows],
        [float(c) for _, c in rows if c is not None],
    )


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
