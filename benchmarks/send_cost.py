"""What ``send()`` of a tracked message costs the sender, against an untracked one.

A tracked ``send()`` writes the message's ``enqueued`` row before it returns (outside a
transaction: at once, a batch of one), so that a page rendered right after it shows the
task. That write commits without waiting for the database's disk
(``write_batch(durable=False)``); the ``durable`` variant waits, as a final change
does. Variants run in turn each round (interleaved), on PostgreSQL, StubBroker, no
worker; the table shows medians of the rounds, µs per ``send()``. With django-eventstream
on Redis (the tests' settings) another process may hold the owner's stream, so the
background sender renders and publishes every row: in a loop of sends that work shares
the CPU with them. The last variant leaves Redis out, with no page open in the process:
nothing is rendered, and what is timed is the send's own.

``--disk-load N`` keeps N processes writing and flushing a file beside the database's
data meanwhile (``dd ... oflag=dsync``): a disk that other work keeps busy, where a
commit's flush waits its turn.

    python benchmarks/send_cost.py                  # 1,000 sends x 5 rounds
    python benchmarks/send_cost.py --disk-load 2    # the same, the disk kept busy
    python benchmarks/send_cost.py --smoke          # small, for CI
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

#: A variant where no stream can listen (no Redis for django-eventstream, no page open in
#: this process): the background sender renders nothing, so what is left is the send's own.
QUIET = "tracked, nothing rendered (in-process streams only, none open)"


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
    args = parser.parse_args()
    sends, rounds = (50, 2) if args.smoke else (args.sends, args.rounds)

    django_on_postgres("taskstate_bench_send")
    import os
    import signal

    import dramatiq
    from django.contrib.auth import get_user_model
    from dramatiq.brokers.stub import StubBroker

    from taskstate.core import transitions
    from taskstate.core.models import Task
    from taskstate.shutdown import flush
    from taskstate.worker.middleware import StateMiddleware

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

    variants: list[tuple[str, dict[str, Any], Any]] = [
        ("untracked", {}, real_write_batch),
        ("tracked (the row's commit does not wait for the disk)", tracked, real_write_batch),
        ("tracked, durable (the commit waits for the disk)", tracked, durable),
        (QUIET, tracked, real_write_batch),
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
            for name, kwargs, write_batch in variants:
                transitions.write_batch = write_batch
                if name == QUIET:
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
        transitions.write_batch = real_write_batch
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


if __name__ == "__main__":
    main()
