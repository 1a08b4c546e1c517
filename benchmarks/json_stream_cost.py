"""What the JSON form of the stream costs the HTML form, per committed change.

Each committed change is one courier job that sends the change in both forms
(``taskstate.web.publish``). The HTML part is what it always was; the JSON part adds:

- **naming**: the JSON channel's name (``json_channel``, an HMAC of the site's identity
  unless ``CHANNEL_NAMESPACE`` is set), once when the job is queued and once when it runs;
- **embedded, nobody on JSON**: the presence check (a dict lookup in django-eventstream's
  listener manager): nothing is built or sent;
- **with Redis or GRIP** (streams may be in other processes): the payload is always built
  (``task_json`` + ``dumps``) and published (``send_event`` to Redis), like the HTML row.

Parts are timed interleaved (each round times every part once, in turn; the table shows
each part's median over the rounds) on a running row with progress.

    python benchmarks/json_stream_cost.py              # 2,000 changes x 5 rounds
    python benchmarks/json_stream_cost.py --smoke      # 50 x 1

Needs PostgreSQL at 127.0.0.1 and Redis: ``TASKSTATE_TEST_REDIS_URL`` (default
redis://127.0.0.1:6379/15). Its database is dropped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _setup import django_on_postgres, table

DB_NAME = "taskstate_bench_json_cost"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.changes, args.rounds = 50, 1

    django_on_postgres(DB_NAME)
    try:
        measure(args.changes, args.rounds)
    finally:
        from django.db import connection

        connection.close()
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def measure(changes: int, rounds: int) -> None:
    from django.contrib.auth import get_user_model
    from django.utils import timezone
    from django_eventstream import send_event
    from django_eventstream.views import get_listener_manager

    from taskstate.core.models import Task
    from taskstate.core.states import Status
    from taskstate.web.channels import json_channel, user_channel
    from taskstate.web.publish import render_row
    from taskstate.web.task_json import dumps, task_json

    user, _ = get_user_model().objects.get_or_create(username="bench-json-cost")
    task = Task.objects.create(
        message_id="bench-json-cost",
        actor_name="export",
        status=Status.RUNNING,
        state_order=5,
        user_id=user.pk,
        description="Export of the 2026 invoices",
        progress=40,
        progress_message="Page 40 of 100",
        attempts=1,
        started_at=timezone.now(),
    )
    html_channel, channel = user_channel(user.pk), json_channel(user.pk)
    html = render_row(task)
    payload = dumps(task_json(task))
    listeners = get_listener_manager().listeners_by_channel

    def html_form() -> None:  # the job's HTML part: render and publish the row
        send_event(html_channel, "", render_row(task), json_encode=False)

    def naming() -> None:  # the JSON channel named when queued and when run
        json_channel(user.pk)
        json_channel(user.pk)

    def nobody_on_json() -> None:  # embedded, no JSON page open
        listeners.get(channel)

    def build() -> None:
        dumps(task_json(task))

    def publish() -> None:
        send_event(channel, "task", payload, json_encode=False)

    parts: dict[str, Callable[[], None]] = {
        "HTML form (render + publish), as before": html_form,
        "JSON: name the channel (twice)": naming,
        "JSON: presence check, nobody (embedded)": nobody_on_json,
        "JSON: build (task_json + dumps)": build,
        "JSON: publish (send_event to Redis)": publish,
    }
    for part in parts.values():
        for _ in range(20):
            part()
    cpu: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(rounds):
        for name, part in parts.items():
            c0 = time.process_time()
            for _ in range(changes):
                part()
            cpu[name].append((time.process_time() - c0) / changes)
    c = {name: statistics.median(values) * 1e6 for name, values in cpu.items()}
    names = list(parts)
    html_us = c[names[0]]
    embedded = c[names[1]] + c[names[2]]
    redis = c[names[1]] + c[names[3]] + c[names[4]]
    print(
        f"## JSON stream cost: {changes} changes x {rounds} interleaved round(s) (median "
        f"CPU), PostgreSQL and Redis at 127.0.0.1 ({len(html):,} bytes of row HTML, "
        f"{len(payload):,} of JSON)\n"
    )
    print(table(["part", "CPU µs"], [[name, f"{c[name]:,.1f}"] for name in names]))
    print()
    print(
        table(
            ["setup", "JSON form adds, µs per change", "share of the HTML form"],
            [
                ["embedded, no JSON page open", f"{embedded:,.1f}", f"{embedded / html_us:.1%}"],
                [
                    "Redis or GRIP (always built and sent)",
                    f"{redis:,.1f}",
                    f"{redis / html_us:.1%}",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
