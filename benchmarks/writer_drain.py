"""The background writer's drain: a backlog of final changes, and how long it takes to commit.

N final changes (``done``, each a new row with an owner) are handed to the background
writer while it holds them (``WRITE_MAX_DELAY`` raised for the run), then released with
``writer.flush()``: the time until every row is committed and announced, median of the
rounds, and where it goes: the statements (parameters sent and the server's work), the
rest of ``write_batch`` (rows built before, models read after) and announcing each row.
It asserts that every row was written. Two variants, interleaved: the
statement's times read by psycopg's C loader (as shipped) and by Django's own.

    python benchmarks/writer_drain.py                  # 1,000 changes x 5 rounds
    python benchmarks/writer_drain.py --smoke          # 50 x 1, for CI
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import django_on_postgres, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="small and fast, for CI")
    parser.add_argument("--messages", type=int, default=1000, help="changes per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", default="taskstate_bench_drain", help="the database it creates")
    args = parser.parse_args()
    if args.smoke:
        args.messages, args.rounds = 50, 1

    django_on_postgres(args.db)
    from django.contrib.auth import get_user_model
    from django.db.backends.signals import connection_created

    import taskstate.worker.writer as writer_module
    from taskstate.core import conf
    from taskstate.core import transitions as t
    from taskstate.core.for_state import Origin, TaskIdentity
    from taskstate.core.models import Status, Task
    from taskstate.core.states import TERMINAL_ORDER
    from taskstate.worker.writer import writer
    from tests.support.drain import flush

    spent: dict[str, float] = {}
    calls: dict[str, int] = {}

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def run(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
                calls[name] = calls.get(name, 0) + 1

        return run

    in_batch = threading.local()

    def statements(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not getattr(in_batch, "on", False):
            return execute(sql, params, many, context)
        return timed("statements", execute)(sql, params, many, context)

    def batch(changes: Any, write_batch: Any = writer_module.write_batch, **kwargs: Any) -> Any:
        in_batch.on = True
        try:
            return write_batch(changes, **kwargs)
        finally:
            in_batch.on = False

    def install(sender: Any = None, connection: Any = None, **kwargs: Any) -> None:
        if statements not in connection.execute_wrappers:
            connection.execute_wrappers.append(statements)

    connection_created.connect(install, weak=False)
    writer_module.write_batch = timed("write_batch", batch)
    writer_module.announce = timed("announce", writer_module.announce)
    conf.WRITE_MAX_DELAY = 3600  # type: ignore[misc]  # held until flushed

    user, _ = get_user_model().objects.get_or_create(username="bench")
    read_in_c = t._read_times_in_c
    variants: dict[str, Callable[..., None]] = {
        "as shipped (timestamptz read by psycopg's C loader)": read_in_c,
        "timestamptz read by Django's loader": lambda connection, cursor: None,
    }
    Round = tuple[float, dict[str, float], int]

    def one_round(tag: str) -> Round:
        Task.objects.all().delete()
        now = datetime.now(timezone.utc)
        values = {
            "attempts": 1,
            "started_at": now,
            "attempt_started_at": now,
            "finished_at": now,
            "progress": 100,
            "error_type": "",
            "error_message": "",
            "traceback": "",
        }
        for i in range(args.messages):
            origin = Origin(
                message_id=f"drain-{tag}-{i}",
                actor_name="noop",
                queue_name="default",
                sent_at=now,
                identity=TaskIdentity(
                    user_pk=user.pk, description="drain", app_name="", model_name=""
                ),
            )
            writer.submit(t.Change(origin, Status.DONE, TERMINAL_ORDER, dict(values)))
        spent.clear()
        calls.clear()
        start = time.perf_counter()
        assert writer.flush(120), "the background writer did not drain"
        elapsed = time.perf_counter() - start
        parts, batches = dict(spent), calls.get("write_batch", 0)
        done = Task.objects.filter(status=Status.DONE).count()
        assert done == args.messages, f"{done} of {args.messages} rows written"
        flush(120)
        return elapsed, parts, batches

    results: dict[str, list[Round]] = {name: [] for name in variants}
    for number in range(args.rounds + 1):  # the first warms up
        # Interleaved, each round in the other order: drift on the machine falls on both.
        names = list(variants) if number % 2 else list(reversed(variants))
        for name in names:
            t._read_times_in_c = variants[name]  # type: ignore[assignment]
            measured = one_round(f"{number}-{len(results[name])}-{name[:4]}")
            if number:
                results[name].append(measured)
    t._read_times_in_c = read_in_c  # type: ignore[assignment]

    def median(name: str, pick: Callable[[Round], float]) -> str:
        return f"{statistics.median(pick(r) for r in results[name]) * 1000:.0f}"

    print(
        f"Draining {args.messages:,} final changes (median of {args.rounds}, "
        f"WRITE_BATCH_SIZE {conf.WRITE_BATCH_SIZE}), ms:\n"
    )
    rows = []
    for name in variants:
        rows.append(
            [
                name,
                median(name, lambda r: r[0]),
                median(name, lambda r: r[1]["statements"]),
                median(name, lambda r: r[1]["write_batch"] - r[1]["statements"]),
                median(name, lambda r: r[1]["announce"]),
                f"{statistics.median(r[2] for r in results[name]):.0f}",
            ]
        )
    print(
        table(
            [
                "variant",
                "all committed and announced",
                "statements (parameters sent, server)",
                "write_batch, the rest (rows built, models read)",
                "announcing the rows",
                "batches (commits)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
