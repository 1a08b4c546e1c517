"""Soak: tracked messages through real workers that are stopped and a database that restarts.

    python benchmarks/soak.py                      # 10,000 messages, 40 worker stops, 10 DB restarts
    python benchmarks/soak.py --messages 2000 --stops 12 --db-restarts 4 --seed 7
    python benchmarks/soak.py --smoke              # small, for CI

Real ``rundramatiq`` workers (``_bench/soak_actors.py``) on a private Redis and a private
PostgreSQL, the worker stopped four ways and the database restarted on a seeded schedule,
owners cancelling tasks through ``taskstate.core.control.cancel``; then every row is checked
against what the actors recorded outside the database (benchmarks/README.md, "Soak").
Exits 1 on any violation, when the broker still holds messages, or when nothing was
measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from _setup import table  # noqa: E402

KINDS = {"quick": 35, "progress": 20, "flaky": 15, "doomed": 10}
KINDS |= {"cancel_queued": 10, "cancel_running": 10}
PATTERNS = (
    "SIGTERM to the main process",
    "SIGTERM to the group, twice",
    "SIGINT to the group",
    "SIGKILL to the group",
)
UNFINISHED = ("enqueued", "delayed", "running", "retrying")
# A dead worker's unacked messages go back to the queue once its heartbeat is this old.
BROKER_OPTIONS = {"heartbeat_timeout": 5000, "maintenance_chance": 1_000_000}
STOP_GRACE = 60.0  # a graceful stop that takes longer is finished with SIGKILL (counted)
CANCEL_TRIES_FOR = 60.0  # a cancel waits this long for its row and the database
CANCELLERS = 8  # owners cancelling at the same time (a cancel may wait for its row)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=50.0, help="messages sent per second")
    parser.add_argument("--stops", type=int, default=40, help="worker stops (patterns in turn)")
    parser.add_argument("--db-restarts", type=int, default=10)
    parser.add_argument("--threads", type=int, default=8, help="threads of the worker process")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--redis-port", type=int, default=None, help="default: a free port")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--smoke", action="store_true", help="a small run for CI")
    args = parser.parse_args()
    if args.smoke:
        args.messages, args.rate, args.stops, args.db_restarts = 160, 40.0, 4, 1
        args.drain_timeout = 120.0
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def poll(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    """Poll an external process's state until ``predicate()`` holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        from tests.support.faults import PostgresServer, RedisServer

        self.args = args
        self.redis = RedisServer(port=args.redis_port)
        self.pg = PostgresServer()
        self.worker: Any = None
        self.sent: dict[str, tuple[str, str]] = {}  # key: (kind, message id)
        self.acks: dict[str, tuple[float, str]] = {}  # key: (time the cancel returned, status)
        self.cancel_refused: dict[str, str] = {}  # key: status of a row no longer cancellable
        self.cancel_unreached: list[str] = []
        self.cancelling: set[str] = set()
        self.lock = threading.Lock()
        self.stops: Counter[str] = Counter()
        self.forced: Counter[str] = Counter()
        self.unexpected_exits = 0
        self.db_down = 0.0
        self.db_restarts = 0
        self.timeline: list[tuple[float, str]] = []  # (time, fault or worker start)
        self.starts: dict[str, list[float]] = defaultdict(list)  # filled by check()
        self.admissions: dict[str, list[float]] = defaultdict(list)  # let start by the hooks
        self.ends: set[str] = set()
        self.rows: dict[str, str] = {}
        self.worker_logs: Counter[str] = Counter()  # taskstate's log lines of every worker
        self.began = time.time()
        pythonpath = [str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]
        values = {
            "DJANGO_SETTINGS_MODULE": "_bench.soak_settings",
            "TASKSTATE_TEST_SERVICES": "1",
            "TASKSTATE_TEST_DB_NAME": "postgres",
            "TASKSTATE_TEST_REDIS_URL": self.redis.url,
            "TASKSTATE_TEST_BROKER_OPTIONS": json.dumps(BROKER_OPTIONS),
            "SOAK_RECORD_URL": f"redis://127.0.0.1:{self.redis.port}/1",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.pg.port),
            "PGUSER": "postgres",
            "PYTHONPATH": os.pathsep.join(filter(None, pythonpath)),
        }
        os.environ.update(values)
        from tests.support.processes import child_env

        self.env = child_env(**values)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        import redis

        self.broker_redis = redis.Redis.from_url(self.redis.url)
        self.records = redis.Redis.from_url(values["SOAK_RECORD_URL"], decode_responses=True)

    # --- workers ---------------------------------------------------------------------------

    def start_worker(self) -> None:
        from tests.support.processes import start_worker

        self.worker = start_worker(self.env, threads=self.args.threads)
        self.timeline.append((time.time(), "worker ready"))

    def stop_worker(self, pattern: str) -> None:
        pgid = self.worker.proc.pid  # the worker runs in a session (and group) of its own
        self.timeline.append((time.time(), pattern))
        if pattern == PATTERNS[0]:
            os.kill(pgid, signal.SIGTERM)
        elif pattern == PATTERNS[1]:
            os.killpg(pgid, signal.SIGTERM)
            os.killpg(pgid, signal.SIGTERM)
        elif pattern == PATTERNS[2]:
            os.killpg(pgid, signal.SIGINT)
        else:
            os.killpg(pgid, signal.SIGKILL)
        self.stops[pattern] += 1
        if not poll(lambda: not group_alive(pgid), STOP_GRACE, 0.2):
            self.forced[pattern] += 1
            os.killpg(pgid, signal.SIGKILL)
            poll(lambda: not group_alive(pgid), 30)
        self.worker.proc.wait(10)
        self.worker._reader.join(5)
        lines = (line for line in self.worker.lines if line.startswith("taskstate:"))
        self.worker_logs.update(re.sub(r"\d+", "N", line)[:110] for line in lines)

    def ensure_worker(self) -> None:
        if self.worker.proc.poll() is not None:
            self.unexpected_exits += 1
            print(f"worker exited by itself:\n{self.worker.output()}", file=sys.stderr)
            self.start_worker()

    # --- the owner and the sender ----------------------------------------------------------

    def send_all(self) -> None:
        from _bench import soak_actors as actors
        from _bench.soak_record import TO_CANCEL
        from django.contrib.auth import get_user_model
        from django.db import close_old_connections

        user, _ = get_user_model().objects.get_or_create(username="soak")
        rng = random.Random(self.args.seed)
        kinds, weights = list(KINDS), list(KINDS.values())
        started = time.monotonic()
        self.began = time.time()
        for i in range(self.args.messages):
            kind = rng.choices(kinds, weights)[0]
            key = f"{kind}-{i}"
            for_state = {"user_pk": user.pk, "description": key}
            args: tuple[Any, ...] = (key,)
            delay = None
            if kind == "progress":
                args = (key, rng.randint(2, 6))
            elif kind == "cancel_running":
                args = (key, 10.0)
            elif kind == "cancel_queued":
                delay = rng.randint(1500, 3000)
            actor = getattr(actors, f"soak_{kind}")
            message = actor.message_with_options(args=args, kwargs={"for_state": for_state})
            self.sent[key] = (kind, message.message_id)
            close_old_connections()  # what a request boundary does in a web process
            actor.broker.enqueue(message, delay=delay)
            if kind == "cancel_queued":
                self.records.rpush(TO_CANCEL, key)
            pause = started + (i + 1) / self.args.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the sending rate, not a synchronisation

    def cancel_all(self) -> None:
        from _bench import soak_record as records

        while True:
            item = self.records.blpop([records.TO_CANCEL], timeout=1)
            if item is None:
                continue
            key = str(item[1])
            if key == "stop":
                return
            with self.lock:  # a redelivered body asks again: one cancel per task
                asked = key in self.cancelling
                self.cancelling.add(key)
            if not asked:
                self.cancel(key)

    def cancel(self, key: str) -> None:
        from django.db import DatabaseError, close_old_connections, connection

        from taskstate.core import control
        from taskstate.core.models import Task

        deadline = time.monotonic() + CANCEL_TRIES_FOR
        while time.monotonic() < deadline:
            try:
                close_old_connections()
                task = Task.objects.filter(message_id=self.sent[key][1]).first()
                if task is not None:
                    written = control.cancel(task)
                    acknowledged = time.time()
                    if written is not None:
                        self.acks[key] = (acknowledged, str(written.status))
                        return
                    # Refused: the task ended, or a try that raised (the database going
                    # away after the request committed) had asked already.
                    task.refresh_from_db()
                    if task.cancel_requested_at is None:
                        self.cancel_refused[key] = task.status
                    else:
                        self.acks[key] = (time.time(), f"{task.status}, asked by a failed try")
                    return
            except DatabaseError:
                connection.close()
            time.sleep(0.1)  # polls for the row or for the database, with a deadline
        self.cancel_unreached.append(key)

    # --- faults ----------------------------------------------------------------------------

    def run_faults(self) -> None:
        rng = random.Random(self.args.seed + 1)
        events = [PATTERNS[i % len(PATTERNS)] for i in range(self.args.stops)]
        events += ["database"] * self.args.db_restarts
        rng.shuffle(events)
        mean_gap = self.args.messages / self.args.rate / max(1, len(events))
        for event in events:
            time.sleep(rng.uniform(0, 2 * mean_gap))  # the seeded schedule
            if event == "database":
                down = rng.uniform(0.5, 3.0)
                self.timeline.append((time.time(), "database stopping"))
                self.pg.stop("fast")
                time.sleep(down)  # how long the database stays down
                self.pg.start()
                self.timeline.append((time.time(), "database up"))
                self.db_restarts += 1
                self.db_down += down
            else:
                self.ensure_worker()
                self.stop_worker(event)
                self.start_worker()

    def drained(self) -> bool:
        from _bench import soak_record as records

        self.ensure_worker()
        return self.in_broker() == 0 and self.records.llen(records.TO_CANCEL) == 0

    def in_broker(self) -> int:
        """Messages the broker holds: queued, delayed, or taken and not acked yet."""
        queues = ("default", "default.DQ")
        return sum(self.broker_redis.hlen(f"dramatiq:{q}.msgs") for q in queues)

    # --- the check -------------------------------------------------------------------------

    def check(self) -> tuple[dict[str, list[str]], dict[str, Counter[str]]]:
        """Violations (what: the keys of its messages) and the figures per kind."""
        from _bench import soak_record as records
        from django.db import connection

        from taskstate.core.models import Task

        for raw in self.records.lrange(records.LOG, 0, -1):
            event, key, at = json.loads(raw)
            if event == "end":
                self.ends.add(key)
            else:
                (self.starts if event == "start" else self.admissions)[key].append(at)
        connection.close()
        ids = [mid for _, mid in self.sent.values()]
        self.rows = dict(
            Task.objects.filter(message_id__in=ids).values_list("message_id", "status")
        )
        violations: dict[str, list[str]] = defaultdict(list)
        figures: dict[str, Counter[str]] = defaultdict(Counter)
        for key, (kind, mid) in self.sent.items():
            acked = self.acks.get(key)
            figures[kind].update(
                {
                    "sent": 1,
                    "let start": bool(self.admissions[key]),
                    "bodies started": bool(self.starts[key]),
                    "ran to the end": key in self.ends,
                    "cancel acknowledged": acked is not None,
                }
            )
            expected = "done" if key in self.ends else "cancelled" if acked else ""
            if kind == "doomed":
                expected = "failed"
            elif not expected:
                violations["never ran to the end, no cancel acknowledged"].append(key)
            status = self.rows.get(mid)
            if status is None:
                violations["no row"].append(key)
            elif status in UNFINISHED:
                violations[f"row left {status}"].append(key)
            elif expected and status != expected:
                violations[f"row {status}, should be {expected}"].append(key)
            else:
                figures[kind]["rows right"] += 1
            # Admission (hooks passed: the body is let start), not the body's first line,
            # which may run later on a busy machine than a cancel answered "running".
            if acked and any(at > acked[0] for at in self.admissions[key]):
                what = f"body started after the cancel was acknowledged (row read {acked[1]})"
                violations[what].append(key)
        return violations, figures

    def describe(self, key: str) -> str:
        """One message's story, times in seconds from the start of sending."""
        mid = self.sent[key][1]
        moments = [(at, "body started") for at in self.starts[key]]
        moments += [(at, "let start") for at in self.admissions[key]]
        if key in self.acks:
            moments.append((self.acks[key][0], f"cancel acknowledged ({self.acks[key][1]})"))
        first = min((at for at, _ in moments), default=self.began)
        last = max((at for at, _ in moments), default=time.time())
        # The faults from 10 s before its first moment to 10 s after its last one.
        moments += [(at, what) for at, what in self.timeline if first - 10 <= at <= last + 10]
        story = ", ".join(f"{what} {at - self.began:.2f}" for at, what in sorted(moments))
        return f"{key} (row {self.rows.get(mid)}): {story}"

    def close(self) -> None:
        if self.worker is not None and self.worker.proc.poll() is None:
            self.worker.kill()
        self.pg.close()
        self.redis.close()


def report(
    soak: Soak, violations: dict[str, list[str]], figures: dict[str, Counter[str]], dead: int
) -> int:
    columns = [
        "sent",
        "let start",
        "bodies started",
        "ran to the end",
        "cancel acknowledged",
        "rows right",
    ]
    rows: list[list[object]] = [[kind, *(figures[kind][c] for c in columns)] for kind in KINDS]
    rows.append(["all", *(sum(figures[k][c] for k in KINDS) for c in columns)])
    print(table(["kind", *columns], rows), end="\n\n")
    stops = [[p, soak.stops[p], soak.forced[p]] for p in PATTERNS]
    print(table(["worker stopped by", "stops", f"still running after {STOP_GRACE:.0f} s"], stops))
    print()
    total = sum(len(keys) for keys in violations.values())
    rows = []
    for what, keys in sorted(violations.items()):
        by_kind = Counter(soak.sent[key][0] for key in keys)
        rows.append([what, len(keys), ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items()))])
    print(table(["violation", "messages", "by kind"], rows or [["none", 0, ""]]), end="\n\n")
    for what, keys in sorted(violations.items()):
        examples = {soak.sent[key][0]: key for key in reversed(keys)}  # the first of each kind
        print(f"{what}, e.g.:", *(f"- {soak.describe(k)}" for k in examples.values()), sep="\n")
        print()
    acked = Counter(status for _, status in soak.acks.values())
    summary = [
        ["seed", soak.args.seed],
        ["database restarts (down in all)", f"{soak.db_restarts} ({soak.db_down:.1f} s)"],
        ["cancels acknowledged, by the status the owner got", dict(sorted(acked.items()))],
        ["cancels refused (task complete), by status", dict(Counter(soak.cancel_refused.values()))],
        ["cancels that never reached a row", len(soak.cancel_unreached)],
        ["workers that exited by themselves", soak.unexpected_exits],
        ["messages dead-lettered (doomed; cancelled while running)", dead],
        ["violations", total],
    ]
    print(table(["measure", "value"], summary), end="\n\n")
    logs = [[text.replace("|", "/"), n] for text, n in soak.worker_logs.most_common()]
    if logs:
        print(table(["taskstate's log lines in the workers (digits as N)", "lines"], logs))
    return total


def main() -> int:
    args = parse_args()
    print(f"seed {args.seed}: {args.messages} messages at {args.rate:g}/s, {args.stops} worker")
    print(f"stops, {args.db_restarts} database restarts\n", flush=True)
    began = time.monotonic()
    soak = Soak(args)
    cancellers = [threading.Thread(target=soak.cancel_all, daemon=True) for _ in range(CANCELLERS)]
    try:
        soak.start_worker()
        for canceller in cancellers:
            canceller.start()
        sender = threading.Thread(target=soak.send_all, name="sender", daemon=True)
        sender.start()
        soak.run_faults()
        sender.join()
        drained = poll(soak.drained, args.drain_timeout, 0.5)
        soak.records.rpush("soak:to-cancel", *["stop"] * CANCELLERS)
        for canceller in cancellers:
            canceller.join(CANCEL_TRIES_FOR + 10)
        soak.stop_worker(PATTERNS[0])  # the last worker, stopped gracefully
        soak.stops[PATTERNS[0]] -= 1  # not one of the faults
        left = soak.in_broker()
        dead = soak.broker_redis.hlen("dramatiq:default.XQ.msgs")
        violations, figures = soak.check()
    finally:
        soak.close()
    total = report(soak, violations, figures, dead)
    print(f"\nwall time {time.monotonic() - began:.0f} s")
    measured = all(sum(figures[k][c] for k in KINDS) for c in ("sent", "let start"))
    measured = measured and sum(soak.stops.values()) > 0
    if not drained:
        print(f"NOT DRAINED: {left} message(s) still in the broker", file=sys.stderr)
    if not measured:
        print("nothing measured", file=sys.stderr)
    return 1 if total or not drained or not measured else 0


if __name__ == "__main__":
    sys.exit(main())
