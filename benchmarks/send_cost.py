"""What ``send()`` of a tracked message costs the sender, against an untracked one.

A tracked ``send()`` writes the message's ``enqueued`` row before it returns (outside a
transaction: at once, a batch of one), so that a page rendered right after it shows the
task. That write commits without waiting for the database's disk
(``write_batch(durable=False)``); the ``durable`` variant waits, as a final change
does. Variants run in turn each round (interleaved), on PostgreSQL, StubBroker, no
worker; the table shows medians of the rounds, µs per ``send()``. With django-eventstream
on Redis (the tests' settings) another process may hold the owner's stream, so the
background sender renders and publishes every row: in a loop of sends that work shares
the CPU with them. The next leaves Redis out, with no page open in the process: nothing
is rendered, and what is timed is the send's own; then the same with the statement
returning every column and the row read from it, as a worker's statement does (a
sender's returns only what the database decides). The last hands the row to
the background writer instead of writing it (what taskstate does not do): the difference
is what the promise "a page rendered right after ``send()`` shows the task" costs.

``--disk-load N`` keeps N processes writing and flushing a file beside the database's
data meanwhile (``dd ... oflag=dsync``): a disk that other work keeps busy, where a
commit's flush waits its turn.

    python benchmarks/send_cost.py                  # 1,000 sends x 5 rounds
    python benchmarks/send_cost.py --disk-load 2    # the same, the disk kept busy
    python benchmarks/send_cost.py --smoke          # small, for CI
    python benchmarks/send_cost.py --statement      # the statement alone, taken apart

``--statement`` times the sender's statement (built as ``write_batch`` builds it) sent
through a psycopg connection of its own, with no Django and no Python around it: as
sent, then without each of its parts (the timeouts prefix, ``RETURNING``,
the owner, whose foreign key the database checks at commit), and a one-column insert
into a table with no index beside the primary key: the floor for one round trip and a
commit on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import django_on_postgres, table

#: What keeping "a page rendered right after send() shows the task" costs: the row handed
#: to the background writer instead (not what taskstate does), nothing rendered either.
HANDED_OVER = "tracked, row handed to the background writer (not kept: what the promise costs)"
#: A variant where no stream can listen (no Redis for django-eventstream, no page open in
#: this process): the background sender renders nothing, so what is left is the send's own.
QUIET = "tracked, nothing rendered (in-process streams only, none open)"
#: The same, the statement returning every column and the row read from it (PostgreSQL
#: returns only what it decides in a sender's row, and the sender builds the rest).
EVERY_COLUMN = "tracked, nothing rendered, every column returned and read"


def disk_load(processes: int, where: Path) -> list[subprocess.Popen[bytes]]:
    """``processes`` loops of synchronous 64 KiB writes to files under ``where``."""
    loops = []
    for number in range(processes):
        target = where / f"load-{number}"
        script = (
            f"while :; do dd if=/dev/zero of={target} bs=64k count=64 oflag=dsync 2>/dev/null; done"
        )
        loops.append(subprocess.Popen(["sh", "-c", script], start_new_session=True))
    return loops


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="small and fast, for CI")
    parser.add_argument("--sends", type=int, default=1_000, help="per variant and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--disk-load", type=int, default=0, metavar="N")
    parser.add_argument("--statement", action="store_true", help="the statement, apart")
    args = parser.parse_args()
    sends, rounds = (50, 2) if args.smoke else (args.sends, args.rounds)

    django_on_postgres("taskstate_bench_send")
    if args.statement:
        statement_apart(sends, rounds)
        return
    import os
    import signal

    import dramatiq
    from django.contrib.auth import get_user_model
    from dramatiq.brokers.stub import StubBroker

    from taskstate.core import transitions
    from taskstate.core.models import Task
    from taskstate.core.states import ENQUEUED_ORDER
    from taskstate.worker.middleware import StateMiddleware
    from tests.support.drain import flush

    broker = StubBroker(middleware=[StateMiddleware()])
    broker.emit_after("process_boot")

    def noop(**_: Any) -> None:
        return None

    actor = dramatiq.actor(noop, broker=broker, actor_name="noop_send_cost")
    user, _ = get_user_model().objects.get_or_create(username="bench")
    tracked = {"for_state": {"user_pk": user.pk, "description": "bench"}}
    real_write_batch = transitions.write_batch

    def durable(changes: Any, **_: Any) -> Any:
        return real_write_batch(changes, durable=True)

    from taskstate.worker import middleware
    from taskstate.worker.writer import writer

    real_write_sent = middleware._write_sent

    def handed_over(changes: Any) -> None:
        for change in changes:
            writer.submit(change)

    variants: list[tuple[str, dict[str, Any], Any, Any]] = [
        ("untracked", {}, real_write_batch, real_write_sent),
        (
            "tracked (the row's commit does not wait for the disk)",
            tracked,
            real_write_batch,
            real_write_sent,
        ),
        ("tracked, durable (the commit waits for the disk)", tracked, durable, real_write_sent),
        (QUIET, tracked, real_write_batch, real_write_sent),
        (EVERY_COLUMN, tracked, real_write_batch, real_write_sent),
        (HANDED_OVER, tracked, real_write_batch, handed_over),
    ]
    from django.conf import settings

    redis = settings.EVENTSTREAM_REDIS
    for _ in range(50):  # warm-up: connection, statement builders
        actor.send(**tracked)

    loops: list[subprocess.Popen[bytes]] = []
    scratch = tempfile.TemporaryDirectory(dir="/var/tmp")
    if args.disk_load:
        loops = disk_load(args.disk_load, Path(scratch.name))
        time.sleep(1)
    timings: dict[str, list[float]] = {name: [] for name, *_ in variants}
    try:
        for _ in range(rounds):
            for name, kwargs, write_batch, write_sent in variants:
                transitions.write_batch = write_batch
                middleware._write_sent = write_sent
                # A sender's row is one of order ENQUEUED_ORDER at most: none is, here.
                transitions.ENQUEUED_ORDER = -1 if name == EVERY_COLUMN else ENQUEUED_ORDER
                if name in (QUIET, EVERY_COLUMN, HANDED_OVER):
                    if hasattr(settings, "EVENTSTREAM_REDIS"):
                        del settings.EVENTSTREAM_REDIS  # in-process streams only, none open
                else:
                    settings.EVENTSTREAM_REDIS = redis
                Task.objects.all().delete()
                broker.flush_all()
                start = time.perf_counter()
                for _ in range(sends):
                    actor.send(**kwargs)
                timings[name].append((time.perf_counter() - start) / sends * 1e6)
                flush(10)  # the background sender's work of this variant ends in it
                rows = Task.objects.count()
                # What was timed happened: a row for every tracked send, none otherwise.
                assert rows == (sends if kwargs else 0), (name, rows)
    finally:
        transitions.ENQUEUED_ORDER = ENQUEUED_ORDER
        transitions.write_batch = real_write_batch
        middleware._write_sent = real_write_sent
        for loop in loops:
            os.killpg(loop.pid, signal.SIGTERM)
            loop.wait()
        scratch.cleanup()

    base = statistics.median(timings["untracked"])
    rows = []
    for name, *_ in variants:
        median = statistics.median(timings[name])
        rows.append(
            [
                name,
                f"{median:,.0f}",
                ", ".join(f"{t:,.0f}" for t in timings[name]),
                f"{median - base:,.0f}",
            ]
        )
    load = f", disk kept busy by {args.disk_load} writer(s)" if args.disk_load else ""
    print(f"## send(): {sends:,} sends x {rounds} interleaved rounds, PostgreSQL{load}\n")
    print(table(["variant", "µs / send (median)", "each round", "above untracked"], rows))


def statement_apart(sends: int, rounds: int) -> None:
    """The sender's statement through psycopg alone, whole and without each part."""
    import dramatiq
    import psycopg
    from django.contrib.auth import get_user_model
    from django.db import connections
    from django.utils import timezone

    from taskstate.core import transitions as t
    from taskstate.core.bounds import server_bounds
    from taskstate.core.models import Task
    from taskstate.core.states import ENQUEUED_ORDER, Status
    from taskstate.worker import middleware

    connection = connections["default"]
    connection.ensure_connection()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    bounds = [*server_bounds(connection), ("synchronous_commit", "off")]

    def statement(owner: bool = True) -> tuple[str, list[Any]]:
        # As the middleware makes a sender's change, and write_batch its statement.
        for_state = {"user_pk": user.pk if owner else None, "description": "bench"}
        message = dramatiq.Message(
            queue_name="default",
            actor_name="bench",
            args=(),
            kwargs={"for_state": for_state},
            options={},
        )
        origin = middleware._origin(message, for_state, warn=False)
        change = t.Change(origin, Status.ENQUEUED, ENQUEUED_ORDER, {})
        values = t._batch_values(change, timezone.now())
        row = t._row(change.origin, values, t._stored_defaults())
        return t._batch_sql(connection, [row], list(values), (), fresh=True)

    db = connection.settings_dict
    raw = psycopg.connect(
        host=db["HOST"],
        user=db["USER"],
        dbname=db["NAME"],
        autocommit=True,
        cursor_factory=psycopg.ClientCursor,
    )
    raw.execute("CREATE TABLE IF NOT EXISTS bench_floor (id serial PRIMARY KEY, v integer)")

    def timed(sql: str, params: list[Any], *, prefix: bool = True, returning: bool = True) -> float:
        if not returning:
            sql = sql.split(" RETURNING ")[0]
        if prefix:
            sql, params = t._with_bounds(bounds, sql, params)
        else:
            sql = f"SET LOCAL synchronous_commit = off; {sql}"
        started = time.perf_counter()
        cursor = raw.execute(sql, params)
        cursor.nextset()
        if returning:
            cursor.fetchall()
        return time.perf_counter() - started

    variants = {
        "as sent": lambda: timed(*statement()),
        "without the timeouts prefix": lambda: timed(*statement(), prefix=False),
        "without RETURNING": lambda: timed(*statement(), returning=False),
        "without an owner (no foreign key checked)": lambda: timed(*statement(owner=False)),
        "floor: INSERT of one integer, no index": lambda: timed(
            "INSERT INTO bench_floor (v) VALUES (%s)", [1], returning=False
        ),
    }
    for run in variants.values():
        for _ in range(20):
            run()
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            timings[name].append(statistics.median(run() for _ in range(sends)) * 1e6)
    written = Task.objects.count()
    assert written == 4 * (20 + rounds * sends), written  # every timed statement wrote its row
    raw.close()
    print(f"## The sender's statement apart: {sends:,} x {rounds} rounds, psycopg alone\n")
    print(
        table(
            ["statement", "µs (median)", "each round"],
            [
                [name, f"{statistics.median(v):,.0f}", ", ".join(f"{x:,.0f}" for x in v)]
                for name, v in timings.items()
            ],
        )
    )


if __name__ == "__main__":
    main()
