"""Load test: C concurrent SSE users on one uvicorn process, a ``rundramatiq`` worker
running tracked tasks sent at R per second for D seconds.

    python benchmarks/load_sse_tasks.py [--smoke] [--clients C] [--rate R] [--duration D]

Defaults: C=500, R=50, D=60 (``--smoke``: 20, 5, 5). Each task is the test actor
``tests.testapp.tasks.labelled`` (three progress reports carrying its description),
owned by a random one of the C users and sent through the Redis broker from here; a
separate ``rundramatiq`` process (8 threads) runs it and publishes every change through
Redis pub/sub to the uvicorn process, which pushes it to the owner's stream. At the end
each user re-reads their list over HTTP (``GET /taskstate/list/``, ``HX-Request``: the
resync a page does when its stream reopens) and the script checks that every task's
final state (done) reached its owner, through SSE or through the resync, and that no
event reached anyone else.

Latency is from the write to the arrival at the client: for ``enqueued`` from the
commit of the sender's upsert (an execute wrapper stamps it), for ``running`` and
``done`` from the row's ``started_at`` / ``updated_at``, taken by the worker just before
its upsert (so a write's own duration is included).

Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (db 15); uses its own
database ``taskstate_bench_load``. Every process started here is stopped here, and any
of this run's messages still queued at the end are removed from Redis.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench.common import (
    ClientProcess,
    CpuMeter,
    clear_tasks,
    db_backends,
    load_average,
    make_users,
    ms,
    percentile,
    rss_kb,
    run_token,
    setup_django,
    table,
)

DB_NAME = "taskstate_bench_load"
BASE_PK = 20_000_001
MAX_P99 = 1.0
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"


def live_workers(url: str) -> int:
    """Dramatiq workers that beat in the last minute on the Redis database of ``url``."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.zcount("dramatiq:__heartbeats__", (time.time() - 60) * 1000, "+inf"))
    finally:
        client.close()


def choose_broker_url(url: str, explicit: bool) -> tuple[str, str]:
    """``url``, or the first quiet Redis database when other workers use its database.

    Another program's worker on the same database takes our messages (and ours takes
    theirs): the run would be wrong and would disturb the other program.
    """
    if explicit or not live_workers(url):
        return url, ""
    base, _, db = url.rpartition("/")
    for candidate in (12, 11, 10, 9, 8):
        alternative = f"{base}/{candidate}"
        if not live_workers(alternative):
            return alternative, (
                f"Redis db {db} had {live_workers(url)} live Dramatiq worker(s) of other "
                f"programs: the broker used db {candidate} instead (SSE pub/sub is not per "
                "database)."
            )
    raise SystemExit(f"other Dramatiq workers are live on Redis db {db} and 8-12; try later")


def remove_leftovers(broker: Any, message_ids: list[str]) -> int:
    """Take this run's messages out of Redis if any are still there (an aborted run)."""
    if not message_ids:
        return 0
    client, ns = broker.client, broker.namespace
    removed = 0
    ack_keys = list(client.scan_iter(match=f"{ns}:__acks__.*", count=1000))
    for start in range(0, len(message_ids), 500):
        batch = message_ids[start : start + 500]
        pipe = client.pipeline()
        for queue in ("default", "default.DQ"):
            for mid in batch:
                pipe.lrem(f"{ns}:{queue}", 0, mid)
            pipe.hdel(f"{ns}:{queue}.msgs", *batch)
        for key in ack_keys:
            pipe.srem(key, *batch)
        removed += sum(int(x) for x in pipe.execute() if isinstance(x, int))
    return removed


class Sender:
    """Sends ``labelled`` tasks at a fixed rate from a few threads (as web requests would);
    stamps the commit of each ``enqueued`` write and whether it was accepted."""

    def __init__(self, token: str, users: list[int]) -> None:
        self.token = token
        self.users = users
        self.records: list[dict[str, Any]] = []
        self.elapsed = 0.0

    def run(self, rate: float, duration: float, threads: int = 4) -> None:
        total = int(rate * duration)
        start = time.monotonic() + 0.2
        give_up = start + duration + max(5.0, duration)
        lock = threading.Lock()
        ends: list[float] = []

        def work(k: int) -> None:
            from django.db import connection

            from tests.testapp import tasks as actors

            rng = random.Random(f"{self.token}-{k}")
            committed = threading.local()

            def stamp(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
                result = execute(sql, params, many, context)
                committed.at = time.time()
                committed.rows = context["cursor"].rowcount
                return result

            mine = []
            try:
                with connection.execute_wrapper(stamp):
                    for i in range(k, total, threads):
                        due = start + i / rate
                        now = time.monotonic()
                        if now > give_up:
                            break
                        if due > now:
                            time.sleep(due - now)
                        uid = rng.choice(self.users)
                        committed.at, committed.rows = None, 0
                        message = actors.labelled.send(
                            for_state={
                                "user_pk": uid,
                                "description": f"[r={self.token} u={uid} s={i}]",
                            }
                        )
                        mine.append(
                            {
                                "uid": uid,
                                "seq": i,
                                "id": message.message_id,
                                "commit": committed.at,
                                # 0 rows: refused, the worker had already moved it on.
                                "accepted": committed.rows > 0,
                            }
                        )
            finally:
                connection.close()
                with lock:
                    self.records.extend(mine)
                    ends.append(time.monotonic())

        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(duration * 3 + 30)
        self.elapsed = max(ends, default=start) - start


def wait_complete(token: str, sent: int, timeout: float) -> tuple[bool, float]:
    """Until every task of the run is complete in the database; (all done?, seconds)."""
    from taskstate.core.models import COMPLETE_STATUSES, Task

    started = time.monotonic()
    mine = Task.objects.filter(description__startswith=f"[r={token} ")
    while time.monotonic() - started < timeout:
        complete = mine.filter(status__in=COMPLETE_STATUSES).count()
        if complete >= sent:
            return True, time.monotonic() - started
        time.sleep(0.5)
    return False, time.monotonic() - started


def analyse(token: str, sender: Sender, frames_path: Path, resync_path: Path) -> dict[str, Any]:
    from taskstate.core.models import Task

    tasks = {
        t["pk"]: t
        for t in Task.objects.filter(description__startswith=f"[r={token} ").values(
            "pk", "message_id", "user_id", "status", "created_at", "started_at", "updated_at"
        )
    }
    commit_of = {r["id"]: r["commit"] for r in sender.records}
    latency: dict[str, list[float]] = {"enqueued": [], "running": [], "done": []}
    seen_status: dict[str, set[int]] = {"enqueued": set(), "running": set(), "done": set()}
    progress_frames = 0
    wrong = foreign = other = 0
    with frames_path.open() as f:
        for line in f:
            stream = json.loads(line)
            uid = stream["uid"]
            for frame in stream["frames"]:
                arrival, kind, pk, status = frame[:4]
                token_fields = frame[4:]
                mine = bool(token_fields) and token_fields[0] == token
                if pk not in tasks and not mine:
                    foreign += 1  # another program on the same Redis pub/sub
                    continue
                owner = tasks[pk]["user_id"] if pk in tasks else None
                if (owner is not None and owner != uid) or (mine and token_fields[1] != uid):
                    wrong += 1
                    continue
                if kind == "progress":
                    progress_frames += 1
                    continue
                if kind != "row" or pk not in tasks or status not in latency:
                    other += 1
                    continue
                if pk in seen_status[status]:
                    continue
                seen_status[status].add(pk)
                task = tasks[pk]
                if status == "enqueued":
                    at = commit_of.get(task["message_id"])
                elif status == "running":
                    at = task["started_at"].timestamp() if task["started_at"] else None
                else:
                    at = task["updated_at"].timestamp()
                if at is not None:
                    latency[status].append(arrival - at)
    resync = json.loads(resync_path.read_text())
    via_resync: set[int] = set()
    wrong_resync = 0
    for uid_text, rows in resync.items():
        uid = int(uid_text)
        for pk, status, _ in rows:
            if pk in tasks and tasks[pk]["user_id"] != uid:
                wrong_resync += 1
            elif pk in tasks and status == "done" and pk not in seen_status["done"]:
                via_resync.add(pk)
    # The worker may start a task before the sender's ``enqueued`` write: that write is
    # then refused (it would move the task backwards) and sends nothing.
    enqueue_first = sum(1 for r in sender.records if r["accepted"])
    queue_wait = [
        (t["started_at"] - t["created_at"]).total_seconds()
        for t in tasks.values()
        if t["started_at"] is not None
    ]
    return {
        "tasks": len(tasks),
        "done_db": sum(1 for t in tasks.values() if t["status"] == "done"),
        "via_sse": len(seen_status["done"]),
        "via_resync": len(via_resync),
        "status_events": {k: len(v) for k, v in seen_status.items()},
        "enqueue_first": enqueue_first,
        "progress_frames": progress_frames,
        "wrong": wrong + wrong_resync,
        "foreign": foreign,
        "other": other,
        "latency": latency,
        "queue_wait": queue_wait,
    }


def run(cfg: argparse.Namespace) -> dict[str, Any]:
    import dramatiq

    from tests.support.processes import free_port, start_uvicorn, start_worker

    url, moved = choose_broker_url(cfg.redis_url or DEFAULT_REDIS, bool(cfg.redis_url))
    setup = setup_django(DB_NAME, url, cfg.pg_connections)
    env = setup.env
    pg_limit = setup.web_limit
    broker = dramatiq.get_broker()
    token = run_token()
    users = make_users(cfg.clients, BASE_PK)
    clear_tasks()
    out: dict[str, Any] = {"token": token, "pg_limit": pg_limit, "broker_note": moved}
    out["foreign_workers"] = live_workers(url)
    sender = Sender(token, [uid for uid, _ in users])
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="taskstate-load-") as tmp:
        workdir = Path(tmp)
        server = start_uvicorn("tests.asgi:application", setup.web_env, port)
        worker = clients = None
        try:
            worker = start_worker(env, threads=8)
            pid = server.proc.pid
            warm = ClientProcess(port, users[:1], workdir)
            try:
                warm.call({"cmd": "connect", "timeout": 30, "concurrency": 1})
                warm.call({"cmd": "resync", "path": "/taskstate/list/", "out": str(workdir / "w")})
                warm.call({"cmd": "close_streams"})
            finally:
                warm.stop()
            clients = ClientProcess(port, users, workdir)
            time.sleep(0.5)
            rss0 = rss_kb([pid])
            db0 = db_backends(DB_NAME)
            out["connected"] = clients.call(
                {"cmd": "connect", "timeout": 120, "concurrency": 20}, timeout=600
            )
            time.sleep(1.0)
            rss1 = rss_kb([pid])
            ok = max(1, out["connected"]["ok"])
            out.update(
                rss0=rss0,
                rss1=rss1,
                rss_per_conn=(rss1 - rss0) / ok,
                db_held=db_backends(DB_NAME) - db0,
            )

            web = CpuMeter(pid).start()
            work = CpuMeter(worker.proc.pid).start()
            client_cpu = CpuMeter(clients.proc.pid).start()
            sender.run(cfg.rate, cfg.duration)
            sent_at = time.monotonic()
            done, drain = wait_complete(token, len(sender.records), max(30.0, cfg.duration))
            out["phase_seconds"] = sender.elapsed + drain
            out.update(
                all_complete=done,
                drain=drain,
                web_cpu=web.stop(),
                worker_cpu=work.stop(),
                client_cpu=client_cpu.stop(),
                sent=len(sender.records),
                send_rate=len(sender.records) / sender.elapsed if sender.elapsed else 0,
            )
            # Trailing events of the last writes, then every user resyncs.
            time.sleep(max(0.0, 2.0 - (time.monotonic() - sent_at - drain)))
            out["rss_end"] = rss_kb([pid])
            out["dump"] = clients.call({"cmd": "dump", "path": str(workdir / "frames.jsonl")})
            # The resync a page does when it reconnects: its old stream is gone.
            clients.call({"cmd": "close_streams"}, timeout=120)
            out["resync"] = clients.call(
                {
                    "cmd": "resync",
                    "path": "/taskstate/list/",
                    "out": str(workdir / "resync.json"),
                    "concurrency": 10,
                },
                timeout=300,
            )
            out.update(analyse(token, sender, workdir / "frames.jsonl", workdir / "resync.json"))
        finally:
            if clients is not None:
                clients.stop()
            if worker is not None:
                worker.stop()
            server.stop()
            out["leftovers_removed"] = remove_leftovers(broker, [r["id"] for r in sender.records])
    clear_tasks()
    return out


def verdict(out: dict[str, Any], cfg: argparse.Namespace) -> list[str]:
    problems = []
    if out["connected"]["ok"] < cfg.clients:
        problems.append(f"only {out['connected']['ok']}/{cfg.clients} streams opened")
    if out["send_rate"] < 0.95 * cfg.rate:
        problems.append(f"sender reached {out['send_rate']:.1f}/s only")
    if not out["all_complete"]:
        problems.append("not every task completed in time (worker behind)")
    missing = out["tasks"] - out["via_sse"] - out["via_resync"]
    if missing or out["tasks"] < out["sent"]:
        problems.append(f"{missing + out['sent'] - out['tasks']} final states never reached")
    if out["wrong"]:
        problems.append(f"{out['wrong']} events to the WRONG user")
    p99 = percentile(out["latency"]["done"], 99)
    if p99 is None or p99 > MAX_P99:
        problems.append("p99 done latency > 1 s")
    return problems


def report(out: dict[str, Any], cfg: argparse.Namespace) -> str:
    problems = verdict(out, cfg)
    lat = out["latency"]
    events = out["status_events"]
    rows = [
        [
            "SSE clients (distinct users)",
            f"{out['connected']['ok']}/{cfg.clients} "
            f"connected in {out['connected']['seconds']:.1f} s"
            + (
                f"; errors: {', '.join(out['connected']['errors'])}"
                if out["connected"]["failed"]
                else ""
            ),
        ],
        ["DB connections held by the open streams", out["db_held"]],
        [
            "tasks sent",
            f"{out['sent']} at {out['send_rate']:.1f}/s (target {cfg.rate:g}/s "
            f"for {cfg.duration:g} s)",
        ],
        [
            "tasks done in DB",
            f"{out['done_db']}/{out['sent']}; all complete "
            f"{out['drain']:.1f} s after the last send",
        ],
        [
            "queue wait (sent → running) p50 / p99",
            f"{ms(percentile(out['queue_wait'], 50))} / {ms(percentile(out['queue_wait'], 99))} ms",
        ],
        ["final state (done) reached owner via SSE", out["via_sse"]],
        ["final state reached owner only after resync", out["via_resync"]],
        ["final state never reached owner", out["tasks"] - out["via_sse"] - out["via_resync"]],
        [
            "status events via SSE (enqueued / running / done)",
            f"{events['enqueued']} / {events['running']} / {events['done']} of "
            f"{out['enqueue_first']} / {out['tasks']} / {out['tasks']} "
            "(a refused enqueued write sends nothing: the worker was first)",
        ],
        ["progress events via SSE", out["progress_frames"]],
        ["events to the WRONG user (SSE + resync)", out["wrong"]],
    ]
    for status in ("enqueued", "running", "done"):
        rows.append(
            [
                f"write → arrival, {status}: p50 / p99",
                f"{ms(percentile(lat[status], 50))} / {ms(percentile(lat[status], 99))} ms",
            ]
        )
    rows += [
        [
            "web RSS per SSE connection",
            f"{out['rss_per_conn']:.0f} KiB "
            f"({out['rss0'] / 1024:.0f} → {out['rss1'] / 1024:.0f} MiB; "
            f"{out['rss_end'] / 1024:.0f} MiB at the end)",
        ],
        ["web process CPU (send + drain)", f"{out['web_cpu']:.0f} % of one core"],
        ["worker CPU (8 threads, all processes)", f"{out['worker_cpu']:.0f} % of one core"],
        ["client process CPU", f"{out['client_cpu']:.0f} % of one core"],
        [
            "resync",
            f"{out['resync']['users']} lists in {out['resync']['seconds']:.1f} s, "
            f"errors {out['resync']['errors'] or 0}",
        ],
        ["streams closed by the server", out["dump"]["closed_by_server"]],
        ["verdict", "PASS" if not problems else "FAIL: " + "; ".join(problems)],
    ]
    notes = [
        f"Run `{out['token']}`; load average at the end {load_average()}; 2 cores; the "
        f"web process's PostgreSQL role may open {out['pg_limit']} connections (the worker "
        "and the sender have a role of their own).",
    ]
    if out["broker_note"]:
        notes.append(out["broker_note"])
    if out["foreign_workers"]:
        notes.append(
            f"Warning: {out['foreign_workers']} other Dramatiq worker(s) were live on the "
            "broker's Redis database at the start; they may have taken some of the tasks."
        )
    if out["foreign"]:
        notes.append(f"{out['foreign']} frames of other programs on the same Redis were ignored.")
    if out["leftovers_removed"]:
        notes.append(f"{out['leftovers_removed']} leftover queue entries removed from Redis.")
    return "\n".join(
        [
            f"C={cfg.clients} SSE clients, R={cfg.rate:g} tasks/s, D={cfg.duration:g} s, "
            "one uvicorn process, one `rundramatiq` process (8 threads):",
            "",
            table(["measure", "value"], rows),
            "",
            "\n\n".join(notes),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="C=20, R=5, D=5 (CI)")
    parser.add_argument("--clients", type=int, help="concurrent SSE users (default 500)")
    parser.add_argument("--rate", type=float, help="tasks sent per second (default 50)")
    parser.add_argument("--duration", type=float, help="seconds of sending (default 60)")
    parser.add_argument(
        "--redis-url",
        help=f"broker URL (default {DEFAULT_REDIS}, or a quiet database when other "
        "Dramatiq workers use that one)",
    )
    parser.add_argument(
        "--pg-connections",
        type=int,
        default=50,
        help="connection limit of the web process's PostgreSQL role (default 50)",
    )
    cfg = parser.parse_args()
    defaults = (20, 5.0, 5.0) if cfg.smoke else (500, 50.0, 60.0)
    cfg.clients = cfg.clients or defaults[0]
    cfg.rate = cfg.rate or defaults[1]
    cfg.duration = cfg.duration or defaults[2]
    out = run(cfg)
    print(report(out, cfg))
    if out["wrong"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
