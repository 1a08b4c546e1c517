"""SSE fan-out on one uvicorn process, against the same page done by 1-second polling.

    python benchmarks/sse_fanout.py [--smoke]
    python benchmarks/sse_fanout.py --users 1000 --write-rates --direct-rates 1000 1000 1000 \
        --step 10 --no-poll        # one rate held, three 10-second windows

For each N (1, 100, 1000 users; ``--smoke``: 1 and 20), N distinct logged-in users each
hold one SSE connection to ``/taskstate/events/`` on ONE uvicorn process, all from one
asyncio client process. A publisher here writes task transitions with
``taskstate.core.transitions.write_batch()`` (a batch of one) for randomly chosen users at a fixed rate; each row's
description carries the user's pk, a sequence number and the time, so every arrival is
checked (right user? delivered once?) and timed from the commit of its write (taken
right after the upsert statement returns, through a database execute wrapper).

Then the rate is raised step by step until delivery lags or drops: first through
``write_batch()`` (database upsert + render + Redis publish, as a worker does), then with
pre-rendered rows sent straight to ``send_event`` (no database), which loads the SSE
process alone. Last, the SSE connections close and the same N users poll
``GET /taskstate/list/`` (``HX-Request: true``) once per second instead.

Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (db 15); uses its own
database ``taskstate_bench_sse``. Every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench.common import (
    ClientProcess,
    CpuMeter,
    clear_tasks,
    cpu_seconds,
    db_backends,
    load_average,
    make_users,
    ms,
    percentile,
    pg_counters,
    rss_kb,
    run_token,
    setup_django,
    table,
)

DB_NAME = "taskstate_bench_sse"
BASE_PK = 10_000_001
#: A step passes when every event arrives, p99 stays under this, and the rate is kept.
MAX_P99 = 1.0


@dataclass
class Phase:
    """What one publishing phase sent: (uid, seq, t_commit, ok) per event."""

    target: float
    duration: float
    records: list[tuple[int, int, float]] = field(default_factory=list)
    refused: int = 0
    elapsed: float = 0.0

    @property
    def achieved(self) -> float:
        return len(self.records) / self.elapsed if self.elapsed else 0.0


class Publisher:
    """Writes transitions (or sends pre-rendered rows) at a fixed rate from a few threads."""

    def __init__(self, token: str, users: list[int]) -> None:
        self.token = token
        self.users = users
        self.seq = 0
        self._row_template = ""

    def _row(self) -> str:
        if not self._row_template:
            from django.template.loader import render_to_string
            from django.utils import timezone

            from taskstate.core.models import Status, Task

            now = timezone.now()
            task = Task(
                pk=987654321,
                actor_name="bench.direct",
                status=Status.RUNNING,
                description="@@TOKEN@@",
                progress=50,
                started_at=now,
                created_at=now,
            )
            row = render_to_string("taskstate/_task_row.html", {"task": task})
            self._row_template = (
                f'<hx-upsert hx-target="#taskstate-rows" sort="desc">{row}</hx-upsert>'
            )
        return self._row_template

    def run(self, rate: float, duration: float, threads: int, direct: bool = False) -> Phase:
        phase = Phase(rate, duration)
        total = max(1, int(rate * duration))
        base = self.seq
        self.seq += total
        lock = threading.Lock()
        start = time.monotonic() + 0.2
        give_up = start + duration + max(2.0, duration)
        ends: list[float] = []
        template = self._row() if direct else ""

        def work(k: int) -> None:
            from django.db import connection

            from taskstate.core.for_state import Origin, TaskIdentity
            from taskstate.core.models import Status
            from taskstate.core.signals import announce
            from taskstate.core.states import ENQUEUED_ORDER, TERMINAL_ORDER, running_order
            from taskstate.core.transitions import Change, write_batch
            from taskstate.web.channels import user_channel

            rng = random.Random(f"{self.token}-{base}-{k}")
            committed = threading.local()

            def stamp(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
                result = execute(sql, params, many, context)
                committed.at = time.time()
                return result

            tasks: dict[int, tuple[Any, int]] = {}
            made = 0
            mine: list[tuple[int, int, float]] = []
            refused = 0
            try:
                with connection.execute_wrapper(stamp):
                    for j in range(k, total, threads):
                        due = start + j / rate
                        now = time.monotonic()
                        if now > give_up:
                            break
                        if due > now:
                            time.sleep(due - now)
                        uid = rng.choice(self.users)
                        seq = base + j
                        t_before = time.time()
                        desc = f"[r={self.token} u={uid} s={seq} t={t_before:.6f}]"
                        if direct:
                            from django_eventstream import send_event

                            send_event(
                                user_channel(uid),
                                "",
                                template.replace("@@TOKEN@@", desc),
                                json_encode=False,
                            )
                            mine.append((uid, seq, t_before))
                            continue
                        origin, step = tasks.get(uid, (None, 0))
                        if origin is None or step > 2:
                            made += 1
                            origin = Origin(
                                message_id=f"{self.token}-{base}-{k}-{made}",
                                actor_name="bench.fanout",
                                queue_name="default",
                                sent_at=_now(),
                                identity=TaskIdentity(
                                    user_pk=uid, description=desc, app_name="", model_name=""
                                ),
                            )
                            step = 0
                        if step == 0:
                            args: tuple[Any, ...] = (Status.ENQUEUED, ENQUEUED_ORDER, {})
                        elif step == 1:
                            args = (
                                Status.RUNNING,
                                running_order(1),
                                {"attempts": 1, "started_at": _now()},
                            )
                        else:
                            args = (
                                Status.DONE,
                                TERMINAL_ORDER,
                                {"attempts": 1, "progress": 100, "finished_at": _now()},
                            )
                        status, order, values = args
                        committed.at = None
                        (task,) = write_batch(
                            [Change(origin, status, order, {**values, "description": desc})]
                        )
                        tasks[uid] = (origin, step + 1)
                        if task is None or committed.at is None:
                            refused += 1
                            continue
                        # A write tells no one: announced as the worker's writes are.
                        announce(task)
                        mine.append((uid, seq, committed.at))
            finally:
                connection.close()  # the backend exits: its statistics are flushed
                with lock:
                    phase.records.extend(mine)
                    phase.refused += refused
                    ends.append(time.monotonic())

        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(duration * 3 + 30)
        phase.elapsed = max(ends, default=start) - start
        return phase


def _now() -> Any:
    from django.utils import timezone

    return timezone.now()


@dataclass
class Delivery:
    expected: int
    delivered: int
    wrong_user: int
    duplicates: int
    foreign: int
    late: int
    latencies: list[float]
    closed_by_server: int
    named: dict[str, int]

    @property
    def lost(self) -> int:
        return self.expected - self.delivered

    @property
    def resets(self) -> int:
        """``stream-reset`` events: the page is told to re-read its list."""
        return self.named.get("stream-reset", 0)


def wait_drained(clients: ClientProcess, expected: int, timeout: float) -> None:
    """Until the clients hold ``expected`` frames, or nothing new came for 1 s."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        frames = clients.call({"cmd": "count"})["frames"]
        if frames >= expected:
            time.sleep(0.2)
            return
        if frames != last:
            last, since = frames, time.monotonic()
        elif time.monotonic() - since > 1.0:
            return
        time.sleep(0.1)


def collect(clients: ClientProcess, phase: Phase, token: str, workdir: Path) -> Delivery:
    path = workdir / "frames.jsonl"
    info = clients.call({"cmd": "dump", "path": str(path)})
    expected = {(uid, seq): t for uid, seq, t in phase.records}
    seqs = {seq for _, seq, _ in phase.records}
    low, high = (min(seqs), max(seqs)) if seqs else (0, -1)
    arrived: dict[tuple[int, int], float] = {}
    wrong = dup = foreign = late = 0
    with path.open() as f:
        for line in f:
            stream = json.loads(line)
            uid = stream["uid"]
            for frame in stream["frames"]:
                arrival, kind = frame[0], frame[1]
                if kind != "row" or len(frame) < 7:
                    foreign += 1
                    continue
                run, owner, seq = frame[4], frame[5], frame[6]
                if run != token:
                    foreign += 1  # another program publishing on the same Redis
                    continue
                if owner != uid:
                    wrong += 1
                    continue
                key = (owner, seq)
                if key in arrived:
                    dup += 1
                elif key in expected:
                    arrived[key] = arrival - expected[key]
                elif not low <= seq <= high:
                    late += 1
                else:
                    wrong += 1  # a sequence number never sent to this user
    return Delivery(
        expected=len(expected),
        delivered=len(arrived),
        wrong_user=wrong,
        duplicates=dup,
        foreign=foreign,
        late=late,
        latencies=list(arrived.values()),
        closed_by_server=info["closed_by_server"],
        named=info["named"],
    )


def publish_phase(
    publisher: Publisher,
    clients: ClientProcess,
    server_pid: int,
    workdir: Path,
    rate: float,
    duration: float,
    threads: int,
    direct: bool,
    gc_log: Path,
) -> tuple[Phase, Delivery, dict[str, float], dict[str, float]]:
    """One publishing phase; CPU in % of one core of the server, of the one client
    process that reads every stream, and of this process (the publisher): on a small
    machine a busy client or publisher is where a latency tail comes from, not the server.
    With it (in the CPU dict) the server's full garbage collections in the phase and its
    longest collection pause."""
    from tests.settings import DATABASES

    db = DATABASES["default"]["NAME"]
    clients.call({"cmd": "dump", "path": str(workdir / "discard.jsonl")})
    before = pg_counters(db)
    meters = {
        "server": CpuMeter(server_pid).start(),
        "client": CpuMeter(clients.proc.pid).start(),
    }
    mine, mine_at = cpu_seconds([os.getpid()]), time.monotonic()
    began = time.time()
    phase = publisher.run(rate, duration, threads, direct=direct)
    wait_drained(clients, len(phase.records), timeout=10 + duration)
    cpu = {name: meter.stop() for name, meter in meters.items()}
    cpu.update(collections(gc_log, began, time.time()))
    cpu["publisher"] = 100 * (cpu_seconds([os.getpid()]) - mine) / (time.monotonic() - mine_at)
    delivery = collect(clients, phase, publisher.token, workdir)
    time.sleep(0.2)
    after = pg_counters(db)
    wall = phase.elapsed or duration
    pg = {k: (after[k] - before[k]) / wall for k in after}
    return phase, delivery, cpu, pg


def collections(gc_log: Path, began: float, ended: float) -> dict[str, float]:
    """The server's full (generation 2) collections between two wall times, and the
    longest pause of any collection then, from its log (``_bench/asgi_gc.py``)."""
    full, longest = 0, 0.0
    for line in gc_log.read_text().splitlines() if gc_log.exists() else []:
        at, generation, pause = line.split()
        if began <= float(at) <= ended:
            full += generation == "2"
            longest = max(longest, float(pause))
    return {"gc_full": full, "gc_longest_ms": longest}


def verdict(phase: Phase, d: Delivery) -> str:
    problems = []
    if phase.achieved < 0.95 * phase.target:
        problems.append("publisher behind")
    if d.lost:
        how = f"{d.resets} resets sent" if d.resets else "no reset: page stays wrong"
        problems.append(f"{d.lost} lost ({how})")
    p99 = percentile(d.latencies, 99)
    if p99 is None or p99 > MAX_P99:
        problems.append("p99 > 1 s")
    if d.wrong_user:
        problems.append("WRONG USER")
    return "ok" if not problems else ", ".join(problems)


def seed_lists(users: list[int], token: str) -> None:
    """Three rows per user (queued, running, done): the page both sides show."""
    from django.utils import timezone

    from taskstate.core.models import Status, Task

    clear_tasks()
    now = timezone.now()
    rows = []
    for uid in users:
        for i, status in enumerate((Status.ENQUEUED, Status.RUNNING, Status.DONE)):
            rows.append(
                Task(
                    message_id=f"{token}-seed-{uid}-{i}",
                    actor_name="bench.seed",
                    status=status,
                    state_order=i,
                    user_id=uid,
                    description=f"[r={token} u={uid} s={i}]",
                    progress=50 * i,
                    created_at=now,
                    updated_at=now,
                    started_at=now if i else None,
                    finished_at=now if i == 2 else None,
                )
            )
    Task.objects.bulk_create(rows, batch_size=2000)


def queries_per_list_request(uid: int) -> int:
    """Statements one ``GET /taskstate/list/`` (htmx) runs, counted in-process."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HX_REQUEST="true")
    client.force_login(get_user_model().objects.get(pk=uid))
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/taskstate/list/")
    assert response.status_code == 200, response.status_code
    return len(captured.captured_queries)


def connect_all(clients: ClientProcess, n: int) -> dict[str, Any]:
    """Open the N streams, 20 at a time; the union of the answers."""
    reply = clients.call({"cmd": "connect", "timeout": 120, "concurrency": 20}, timeout=600)
    if reply["failed"]:
        print(f"# N={n}: {reply['failed']} streams failed: {reply['errors']}", file=sys.stderr)
    return reply


def run_n(
    n: int,
    users: list[tuple[int, str]],
    env: dict[str, str],
    cfg: argparse.Namespace,
    token: str,
    workdir: Path,
) -> dict[str, Any]:
    from tests.support.processes import free_port, start_uvicorn

    clear_tasks()
    port = free_port()
    out: dict[str, Any] = {"n": n, "ramp": [], "direct": []}
    gc_log = workdir / f"gc-{n}.log"
    env = {
        **env,
        "BENCH_GC_LOG": str(gc_log),
        "BENCH_GC_FREEZE": "1" if cfg.gc_freeze else "",
        "BENCH_GC_THRESHOLD": cfg.gc_threshold or "",
    }
    bench = Path(__file__).resolve().parent
    server = start_uvicorn("_bench.asgi_gc:application", env, port, app_dir=bench)
    try:
        pid = server.proc.pid
        clients = ClientProcess(port, users[:n], workdir)
        try:
            # Warm up: one stream and one list read load every module before the baseline.
            warm = ClientProcess(port, users[:1], workdir)
            try:
                warm.call({"cmd": "connect", "timeout": 30, "concurrency": 1})
                warm.call({"cmd": "resync", "path": "/taskstate/list/", "out": str(workdir / "w")})
                warm.call({"cmd": "close_streams"})
            finally:
                warm.stop()
            time.sleep(0.5)
            rss0 = rss_kb([pid])
            db0 = db_backends(DB_NAME)
            connected = connect_all(clients, n)
            time.sleep(1.0)
            rss1 = rss_kb([pid])
            out.update(
                connected=connected,
                rss0_kb=rss0,
                rss1_kb=rss1,
                rss_per_conn_kb=(rss1 - rss0) / max(1, connected["ok"]),
                db_held=db_backends(DB_NAME) - db0,
            )
            if not connected["uids"]:
                raise RuntimeError(f"no SSE stream opened: {connected['errors']}")
            publisher = Publisher(token, connected["uids"])
            out["steady"] = publish_phase(
                publisher,
                clients,
                pid,
                workdir,
                cfg.rate,
                cfg.duration,
                1,
                direct=False,
                gc_log=gc_log,
            )
            for key, rates, direct in (
                ("ramp", cfg.ramp, False),
                ("direct", cfg.direct_ramp, True),
            ):
                for rate in rates:
                    step = publish_phase(
                        publisher,
                        clients,
                        pid,
                        workdir,
                        rate,
                        cfg.step,
                        cfg.threads,
                        direct=direct,
                        gc_log=gc_log,
                    )
                    out[key].append(step)
                    if verdict(step[0], step[1]) != "ok":
                        break
            out["rss_end_kb"] = rss_kb([pid])
            clients.call({"cmd": "close_streams"}, timeout=60)
        finally:
            clients.stop()

        if not cfg.poll:
            return out
        # The same page by polling: N users, one GET a second each.
        user_pks = [uid for uid, _ in users[:n]]
        seed_lists(user_pks, token)
        out["queries_per_request"] = queries_per_list_request(user_pks[0])
        from tests.settings import DATABASES

        pollers = ClientProcess(port, users[:n], workdir)
        try:
            time.sleep(0.5)
            before = pg_counters(DATABASES["default"]["NAME"])
            meter = CpuMeter(pid).start()
            poll = pollers.call(
                {"cmd": "poll", "duration": cfg.poll, "interval": 1.0, "path": "/taskstate/list/"},
                timeout=cfg.poll + 120,
            )
            out["poll_cpu"] = meter.stop()
            time.sleep(0.5)
            after = pg_counters(DATABASES["default"]["NAME"])
        finally:
            pollers.stop()
        out["poll"] = poll
        out["poll_pg"] = {k: (after[k] - before[k]) / poll["seconds"] for k in after}
    finally:
        server.stop()
    return out


def report(results: list[dict[str, Any]], cfg: argparse.Namespace, token: str) -> str:
    lines = [
        "SSE fan-out, one uvicorn process (h11, asyncio loop"
        + (", gc.freeze() at start" if cfg.gc_freeze else "")
        + (f", gc.set_threshold({cfg.gc_threshold})" if cfg.gc_threshold else "")
        + f"); run `{token}`, "
        f"load average at the end {load_average()}; the server's PostgreSQL role may open "
        f"{cfg.pg_limit} connections (the publisher has a role of its own).",
        "",
        f"**Steady publishing** at {cfg.rate:g} transitions/s for {cfg.duration:g} s through "
        "`transitions.write_batch()` (one publisher thread), random users:",
        "",
    ]
    rows = []
    for r in results:
        phase, d, cpu, pg = r["steady"]
        rows.append(
            [
                r["n"],
                f"{r['connected']['ok']}/{r['n']} in {r['connected']['seconds']:.1f} s",
                r["db_held"],
                f"{r['rss_per_conn_kb']:.0f}",
                f"{r['rss0_kb'] / 1024:.0f} → {r['rss1_kb'] / 1024:.0f}",
                f"{d.delivered}/{d.expected}",
                d.wrong_user,
                ms(percentile(d.latencies, 50)),
                ms(percentile(d.latencies, 99)),
                f"{cpu['server']:.0f}",
                f"{pg['xacts']:.0f}",
            ]
        )
    lines.append(
        table(
            [
                "users N",
                "streams open",
                "DB conns held",
                "server RSS KiB/conn",
                "server RSS MiB",
                "delivered/expected",
                "wrong user",
                "p50 ms",
                "p99 ms",
                "server CPU %",
                "DB xacts/s",
            ],
            rows,
        )
    )
    for key, title in (
        (
            "ramp",
            "**Raising the rate through `write_batch()`** (DB upsert + render + Redis publish, "
            f"{cfg.threads} publisher threads in the benchmark process)",
        ),
        (
            "direct",
            "**Raising the rate with pre-rendered rows sent straight to `send_event`** "
            "(no DB: loads the SSE process alone)",
        ),
    ):
        lines += ["", title + ":", ""]
        rows = []
        for r in results:
            for phase, d, cpu, _ in r[key]:
                rows.append(
                    [
                        r["n"],
                        f"{phase.target:g}",
                        f"{phase.achieved:.0f}",
                        f"{d.delivered}/{d.expected}",
                        d.resets,
                        d.wrong_user,
                        ms(percentile(d.latencies, 50)),
                        ms(percentile(d.latencies, 99)),
                        f"{cpu['server']:.0f} / {cpu['client']:.0f} / {cpu['publisher']:.0f}",
                        f"{cpu['gc_full']:.0f} / {cpu['gc_longest_ms']:.0f}",
                        verdict(phase, d),
                    ]
                )
        lines.append(
            table(
                [
                    "users N",
                    "target ev/s",
                    "sent ev/s",
                    "delivered/expected",
                    "resets",
                    "wrong user",
                    "p50 ms",
                    "p99 ms",
                    "CPU %: server / client / publisher",
                    "server's full GCs / longest GC pause ms",
                    "verdict",
                ],
                rows,
            )
        )
    lines += [
        "",
        "**Max events/s one SSE process pushes** (highest step with every event delivered, "
        "p99 ≤ 1 s and the rate kept; `>` when the highest step tried still passed):",
        "",
    ]
    rows = []
    for r in results:
        rows.append([r["n"], _max_ok(r["ramp"], cfg.ramp), _max_ok(r["direct"], cfg.direct_ramp)])
    lines.append(table(["users N", "through write_batch()", "send_event only"], rows))
    if not cfg.poll:
        return "\n".join(lines)
    lines += [
        "",
        f"**Same page by 1-second polling** of `GET /taskstate/list/` (HX-Request, 3 rows per "
        f"user) for {cfg.poll:g} s:",
        "",
    ]
    rows = []
    for r in results:
        p = r["poll"]
        pg = r["poll_pg"]
        errors = sum(p["errors"].values())
        rows.append(
            [
                r["n"],
                f"{p['requests'] / p['seconds']:.1f}",
                f"{r['n']:g}",
                ms(p["mean"]),
                ms(p["p99"]),
                f"{errors} ({', '.join(f'{k}: {v}' for k, v in p['errors'].items())})"
                if errors
                else 0,
                f"{r['poll_cpu']:.0f}",
                r["queries_per_request"],
                f"{pg['xacts']:.0f}",
                f"{pg['sessions']:.0f}",
                f"{pg['tup_returned']:.0f}",
            ]
        )
    lines.append(
        table(
            [
                "users N",
                "served req/s",
                "wanted req/s",
                "mean ms",
                "p99 ms",
                "errors",
                "server CPU %",
                "queries/request",
                "DB xacts/s",
                "DB connections/s",
                "DB tuples read/s",
            ],
            rows,
        )
    )
    extra = []
    for r in results:
        for _, d, _, _ in [r["steady"], *r["ramp"], *r["direct"]]:
            if d.closed_by_server or d.duplicates or d.foreign or d.late:
                extra.append(
                    f"N={r['n']}: {d.closed_by_server} streams closed by the server, "
                    f"{d.duplicates} duplicates, {d.late} late from an earlier step, "
                    f"{d.foreign} frames of other programs on the same Redis."
                )
                break
    if extra:
        lines += ["", "\n\n".join(extra)]
    return "\n".join(lines)


def _max_ok(steps: list[Any], rates: list[float]) -> str:
    passed = [phase.target for phase, d, _, _ in steps if verdict(phase, d) == "ok"]
    if not steps:
        return "-"
    if not passed:
        return f"< {steps[0][0].target:g}"
    best = max(passed)
    if len(passed) == len(steps) and best == max(rates):
        return f"> {best:g} (all steps passed)"
    return f"{best:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small N, a few seconds (CI)")
    parser.add_argument("--users", type=int, nargs="*", help="N values (default 1 100 1000)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--pg-connections",
        type=int,
        default=50,
        help="connection limit of the web process's PostgreSQL role (default 50)",
    )
    parser.add_argument(
        "--direct-rates",
        type=float,
        nargs="+",
        help="events/s of the send_event steps (default 500 1000 2000 4000 8000)",
    )
    parser.add_argument(
        "--write-rates",
        type=float,
        nargs="*",
        help="transitions/s of the write_batch() steps (none: skip them)",
    )
    parser.add_argument("--step", type=float, help="seconds of each step (default 5)")
    parser.add_argument("--no-poll", action="store_true", help="skip the polling comparison")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="the server freezes what it loaded at start out of the garbage collector",
    )
    parser.add_argument(
        "--gc-threshold",
        metavar="A,B,C",
        help="the server's gc.set_threshold() (CPython's default: 700,10,10)",
    )
    given = parser.parse_args()
    cfg = argparse.Namespace(**vars(given))
    if cfg.smoke:
        cfg.users = cfg.users or [1, 20]
        cfg.rate, cfg.duration, cfg.step, cfg.threads, cfg.poll = 20.0, 2.0, 1.5, 2, 3.0
        cfg.ramp, cfg.direct_ramp = [100.0], [200.0]
    else:
        cfg.users = cfg.users or [1, 100, 1000]
        cfg.rate, cfg.duration, cfg.step, cfg.threads, cfg.poll = 100.0, 10.0, 5.0, 4, 10.0
        cfg.ramp = [100.0, 200.0, 400.0, 800.0, 1600.0]
        cfg.direct_ramp = [500.0, 1000.0, 2000.0, 4000.0, 8000.0]
    if given.direct_rates is not None:
        cfg.direct_ramp = given.direct_rates
    if given.write_rates is not None:
        cfg.ramp = given.write_rates
    if given.step is not None:
        cfg.step = given.step
    if given.no_poll:
        cfg.poll = 0.0

    setup = setup_django(DB_NAME, cfg.redis_url, cfg.pg_connections)
    env = setup.web_env
    cfg.pg_limit = setup.web_limit
    token = run_token()
    users = make_users(max(cfg.users), BASE_PK)
    results = []
    with tempfile.TemporaryDirectory(prefix="taskstate-bench-") as tmp:
        for n in cfg.users:
            started = time.monotonic()
            results.append(run_n(n, users, env, cfg, token, Path(tmp)))
            print(f"# N={n} done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    clear_tasks()
    print(report(results, cfg, token))
    phases = [p for r in results for p in [r["steady"], *r["ramp"], *r["direct"]]]
    wrong = sum(d.wrong_user for _, d, _, _ in phases)
    if wrong:
        print(f"\n{wrong} events reached the wrong user", file=sys.stderr)
        sys.exit(1)
    # A table of nothing measured is a failure: every phase must have published events
    # and, at the rates of a smoke run, delivered each of them or told the page to resync
    # (a stream that falls behind gets a stream-reset: the page re-reads the database).
    # A loss without a reset leaves a page wrong: that fails.
    empty = [p for p, _, _, _ in phases if not p.records]
    silent = sum(d.lost for _, d, _, _ in phases if d.lost and not d.resets)
    if empty or (cfg.smoke and silent):
        print(
            f"\n{len(empty)} phases published nothing; {silent} events lost without a reset",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
