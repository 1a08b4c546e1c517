"""Where should a committed change be rendered: in the worker, or where the stream is held?

Issue 12 asked which design is cheaper. Both were measured part by part, interleaved
(each round times every part once, in turn; the table shows each part's median over the
rounds), on PostgreSQL and Redis:

- **render in the worker** (taskstate's design): the publisher asks whether anyone listens
  (``taskstate.presence``: a Redis read when no stream is open in its own process, or a
  remembered "yes"), and only then renders the row and publishes its HTML;
- **render where the stream is held**: the worker publishes a small notice (the task's
  key and order) and each web process holding a stream of that user reads the row from
  the database and renders it, once per stream or, with a cache, once per process.

The parts: ``presence, nobody`` (a Redis ZCARD that finds no mark), ``presence,
remembered yes``, ``render`` (``render_row`` of a running row with progress), ``publish
HTML`` and ``publish notice`` (django-eventstream's ``send_event`` to Redis), ``read +
render`` (the row read by primary key, then rendered: what a stream holder would do). The
totals per committed change for 0, 1 and 3 open tabs are sums of the measured parts.

    python benchmarks/render_where.py                    # 2,000 changes x 5 rounds
    python benchmarks/render_where.py --smoke             # 50 x 1, for CI

Redis: ``TASKSTATE_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/15).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import django_on_postgres, table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.changes, args.rounds = 50, 1

    django_on_postgres("taskstate_bench_render_where")
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone
    from django_eventstream import send_event

    from taskstate import presence
    from taskstate.channels import user_channel
    from taskstate.models import Task
    from taskstate.publish import render_row
    from taskstate.states import Status

    user, _ = get_user_model().objects.get_or_create(username="bench-render-where")
    task = Task.objects.create(
        message_id="bench-render-where",
        actor_name="export",
        queue_name="default",
        status=Status.RUNNING,
        state_order=5,
        user_id=user.pk,
        description="Export of the 2026 invoices",
        progress=40,
        progress_message="Page 40 of 100",
        attempts=1,
        started_at=timezone.now(),
    )
    channel = user_channel(user.pk)
    nobody = user_channel(user.pk + 10_000)  # no stream, no mark
    html = render_row(task)
    notice = json.dumps({"task": task.pk, "order": task.state_order})

    readers = presence.Readers()
    presence.TRUST_YES_FOR = 3_600.0
    presence.board.hold([channel])  # a mark, as a web process with a stream sets it
    assert readers.listened(channel), "the marked channel reads as listened"
    assert not readers.listened(nobody), "the unmarked one does not"

    def presence_nobody() -> None:
        readers.listened(nobody)

    def presence_yes() -> None:
        readers.listened(channel)

    def render() -> None:
        render_row(task)

    def publish_html() -> None:
        send_event(channel, "", html, json_encode=False)

    def publish_notice() -> None:
        send_event(channel, "notice", notice, json_encode=False)

    def read_render() -> None:
        render_row(Task.objects.get(pk=task.pk))

    parts: dict[str, Callable[[], None]] = {
        "presence, nobody (Redis read)": presence_nobody,
        "presence, remembered yes": presence_yes,
        "render": render,
        "publish HTML": publish_html,
        "publish notice": publish_notice,
        "read + render": read_render,
    }
    for part in parts.values():  # warm up: templates compiled, connections open
        for _ in range(20):
            part()
    cpu: dict[str, list[float]] = {name: [] for name in parts}
    wall: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, part in parts.items():
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(args.changes):
                part()
            cpu[name].append((time.process_time() - c0) / args.changes)
            wall[name].append((time.perf_counter() - w0) / args.changes)
    presence.board.release([channel])
    presence.board.stop()
    connection.close()

    c = {name: statistics.median(values) * 1e6 for name, values in cpu.items()}
    w = {name: statistics.median(values) * 1e6 for name, values in wall.items()}
    print(
        f"## Render where: {args.changes} changes x {args.rounds} interleaved round(s) "
        f"(median), PostgreSQL at 127.0.0.1, Redis ({len(html):,} bytes of row HTML, "
        f"{len(notice)} of notice)\n"
    )
    print(
        table(
            ["part", "CPU µs", "wall µs"],
            [[name, f"{c[name]:,.0f}", f"{w[name]:,.0f}"] for name in parts],
        )
    )
    print()

    def fmt(worker: float, web: float) -> str:
        return f"{worker + web:,.0f} ({worker:,.0f} + {web:,.0f})"

    rows = []
    for tabs in (0, 1, 3):
        listened = tabs > 0
        before = (c["render"] + c["publish HTML"], 0.0)
        worker = (
            (c["presence, remembered yes"] + c["render"] + c["publish HTML"], 0.0)
            if listened
            else (c["presence, nobody (Redis read)"], 0.0)
        )
        per_stream = (c["publish notice"], tabs * c["read + render"])
        per_process = (c["publish notice"], c["read + render"] if listened else 0.0)
        rows.append(
            [
                tabs,
                fmt(*before),
                fmt(*worker),
                fmt(*per_stream),
                fmt(*per_process),
            ]
        )
    print(
        "### CPU µs per committed change, worker + web (open tabs of the user, one web process)\n"
    )
    print(
        table(
            [
                "open tabs",
                "render in the worker, always (before)",
                "render in the worker, only when listened (taskstate)",
                "notice; each stream reads + renders",
                "notice; each web process reads + renders once",
            ],
            rows,
        )
    )
    print(
        "\nBehind a GRIP proxy (Pushpin) the streams are held by the proxy, which cannot "
        "render: only the worker can. The web side's read is one query per change per "
        "web process with a stream of that user, on the web's database connections.\n"
    )


if __name__ == "__main__":
    main()
