"""Where should a committed change be rendered: in the worker, or where the stream is held?

Each design is measured part by part, interleaved (each round times every part once, in
turn; the table shows each part's median over the rounds), on PostgreSQL and Redis:

- **render in the worker** (taskstate's design): the worker renders the row and publishes
  its HTML. A cross-process presence protocol (each web process marks the channels it
  serves in Redis, the publisher reads the mark before rendering) would skip both when
  nobody listens, for one Redis read, or cost a remembered "yes" when someone does;
- **render where the stream is held**: the worker publishes a small notice (the task's
  key and order) and each web process holding a stream of that user reads the row from
  the database and renders it, once per stream or, with a cache, once per process.

The parts: ``presence, nobody`` (the protocol's read: a Redis ZCARD that finds no mark),
``presence, remembered yes`` (a dict lookup against a deadline), ``render``
(``render_row`` of a running row with progress), ``publish HTML`` and ``publish notice`` (django-eventstream's ``send_event`` to Redis), ``read +
render`` (the row read by primary key, then rendered: what a stream holder would do). The
totals per committed change for 0, 1 and 3 open tabs are sums of the measured parts.
The last table weighs them for a mix: 1,000 tracked tasks a minute, four committed
changes each (enqueued, running, one progress, done), their owners having 0, 1 or 3 tabs
open for 10, 60 and 30 % of them: CPU per second with and without the protocol, as a
share of one core.

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

#: The realistic mix the decision is weighed on.
TASKS_PER_MINUTE = 1_000
#: Committed changes a tracked task publishes: enqueued, running, one progress, done.
CHANGES_PER_TASK = 4
#: Open tabs of a task's owner -> share of the tasks.
MIX = {0: 0.10, 1: 0.60, 3: 0.30}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.changes, args.rounds = 50, 1

    django_on_postgres("taskstate_bench_render_where")
    import redis
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone
    from django_eventstream import send_event

    from taskstate.core.models import Task
    from taskstate.core.states import Status
    from taskstate.web.channels import user_channel
    from taskstate.web.publish import render_row

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

    client = redis.Redis(**settings.EVENTSTREAM_REDIS)
    marked, unmarked = f"bench:listening:{channel}", f"bench:listening:{nobody}"
    client.zadd(marked, {"web-1": time.time() + 30})  # a mark, as a web process sets it
    remembered = {channel: time.monotonic() + 3_600.0}
    assert client.zcard(marked) == 1, "the marked channel reads as listened"
    assert client.zcard(unmarked) == 0, "the unmarked one does not"

    def presence_nobody() -> None:
        client.zcard(unmarked)

    def presence_yes() -> None:
        assert remembered.get(channel, 0.0) > time.monotonic()

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
    client.delete(marked)
    client.close()
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
    always: dict[int, float] = {}
    protocol: dict[int, float] = {}
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
        always[tabs], protocol[tabs] = sum(before), sum(worker)
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
                "render in the worker, always (taskstate)",
                "render in the worker, only when listened (cross-process protocol)",
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

    changes_per_second = TASKS_PER_MINUTE / 60 * CHANGES_PER_TASK
    mix_rows = []
    for tabs, share in MIX.items():
        mix_rows.append(
            [
                f"{tabs} ({share:.0%} of tasks)",
                f"{always[tabs]:,.0f}",
                f"{protocol[tabs]:,.0f}",
                f"{always[tabs] - protocol[tabs]:+,.0f}",
            ]
        )
    mean_always = sum(share * always[tabs] for tabs, share in MIX.items())
    mean_protocol = sum(share * protocol[tabs] for tabs, share in MIX.items())
    mix_rows.append(
        [
            "weighted mean",
            f"{mean_always:,.0f}",
            f"{mean_protocol:,.0f}",
            f"{mean_always - mean_protocol:+,.0f}",
        ]
    )

    def core(us_per_change: float) -> str:
        per_second = us_per_change * changes_per_second / 1e6
        return f"{per_second * 1e3:,.1f} ms/s = {per_second:.2%} of a core"

    mix_rows.append(
        [
            f"CPU at {changes_per_second:,.1f} changes/s",
            core(mean_always),
            core(mean_protocol),
            core(mean_always - mean_protocol),
        ]
    )
    print(
        f"### The mix: {TASKS_PER_MINUTE:,} tracked tasks/min x {CHANGES_PER_TASK} changes, "
        "owners with 0/1/3 tabs open for 10/60/30 % (CPU µs per change, worker + web)\n"
    )
    print(
        table(
            ["open tabs", "always render", "cross-process protocol", "saved by the protocol"],
            mix_rows,
        )
    )


if __name__ == "__main__":
    main()
