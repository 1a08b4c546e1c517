"""An acked message always has its final row committed, whatever stops the worker.

A real ``rundramatiq`` process group on a private Redis is stopped the ways process
managers stop it (one SIGTERM, SIGTERM to the whole group twice as systemd's default
``KillMode=control-group`` and ``kill -TERM -PGID`` do, SIGINT, SIGKILL), and once while
a private PostgreSQL is down. Afterwards every message the broker no longer holds (it was
acked) has its final row; every message it still holds is delivered again to a new
worker and ends final too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
from dramatiq import Message

from taskstate.core.models import Task
from tests.support.faults import (
    PostgresServer,
    RedisServer,
    fault_env,
    postgres_unavailable,
    wait_for,
)
from tests.support.processes import REPO, Process, child_env, start_worker
from tests.testapp import tasks as actors

pytestmark = pytest.mark.integration

#: A worker silent for 3 s counts as dead, and every broker command looks for dead ones,
#: so a stopped worker's unacked messages come back within seconds (defaults: 60 s, and
#: one command in a thousand).
FAST_REQUEUE = json.dumps({"heartbeat_timeout": 3000, "maintenance_chance": 1_000_000})
#: Final changes wait half a second for their batch unless an ack hurries them: a stop
#: then always meets finished messages whose final change is not written yet.
SLOW_BATCHES = json.dumps({"WRITE_MAX_DELAY": 0.5})
FINAL = ("done", "failed", "skipped", "cancelled")


@pytest.fixture
def started() -> Iterator[list[Process]]:
    processes: list[Process] = []
    try:
        yield processes
    finally:
        for process in reversed(processes):
            process.stop()


def held(server: RedisServer) -> set[str]:
    """Ids of the messages the broker still holds for delivery: queued, delayed, or
    delivered and not acked (an ack deletes the message; a nack moves it to the dead
    letters, ``*.XQ``, where it is over too)."""
    client = redis.Redis.from_url(server.url)
    try:
        ids = set()
        for key in client.scan_iter("dramatiq:*.msgs"):
            if key.endswith(b".XQ.msgs"):
                continue
            for data in client.hvals(key):
                ids.add(json.loads(data)["message_id"])
        return ids
    finally:
        client.close()


def stopped_by(worker: Process, how: str) -> float:
    """Stop ``worker`` as ``how`` says; returns the seconds it took to exit."""
    pid = worker.proc.pid  # the leader of its own process group
    start = time.monotonic()
    if how == "sigterm":
        os.kill(pid, signal.SIGTERM)
    elif how == "sigterm-group-twice":
        os.killpg(pid, signal.SIGTERM)
        os.killpg(pid, signal.SIGTERM)
    elif how == "sigint":
        os.kill(pid, signal.SIGINT)
    elif how == "sigkill":
        os.killpg(pid, signal.SIGKILL)
    else:  # pragma: no cover
        raise ValueError(how)
    worker.proc.wait(60)
    return time.monotonic() - start


def statuses(ids: list[str]) -> dict[str, str]:
    return dict(Task.objects.filter(message_id__in=ids).values_list("message_id", "status"))


@pytest.mark.parametrize("how", ["sigterm", "sigterm-group-twice", "sigint", "sigkill"])
def test_stopped_worker_leaves_every_acked_message_final_and_the_rest_redelivered(
    process_env, private_redis, sender, started, tmp_path, user, how
):
    env = fault_env(
        process_env,
        tmp_path,
        private_redis,
        TASKSTATE_TEST_BROKER_OPTIONS=FAST_REQUEUE,
        TASKSTATE_TEST_CONSTANTS=SLOW_BATCHES,
    )
    worker = start_worker(env, threads=8)
    started.append(worker)
    messages: list[Message] = [
        sender.enqueue(actors.paced.message(2, 0.005, for_state={"user_pk": user.pk}))
        for _ in range(300)
    ]
    ids = [m.message_id for m in messages]
    wait_for(lambda: len(set(ids) - held(private_redis)) >= 60, 60, "60 messages to be acked", 0.01)

    took = stopped_by(worker, how)
    acked = set(ids) - held(private_redis)
    rows = statuses(ids)
    not_final = {i: rows.get(i) for i in acked if rows.get(i) not in FINAL}
    assert not not_final, (
        f"{len(not_final)} of {len(acked)} acked messages have no final row after {how} "
        f"(exit in {took:.1f}s): {sorted(set(not_final.values()), key=str)}\n{worker.output()}"
    )

    # The rest come back to a new worker and end final too.
    started.append(start_worker(env, threads=8))
    wait_for(lambda: not held(private_redis), 60, "every message to be acked")
    rows = statuses(ids)
    assert sorted(set(rows.values())) == ["done"] and len(rows) == len(ids)


def test_stop_during_a_database_outage_acks_nothing_without_its_row(
    private_redis, sender, started, tmp_path
):
    """A successful 3 s task, three quick ones and one that fails on every attempt, all
    ending while PostgreSQL is down; the worker is stopped before it comes back."""
    if reason := postgres_unavailable():
        pytest.skip(reason)
    pg = PostgresServer()
    try:
        env = fault_env(
            child_env(),
            tmp_path,
            private_redis,
            PGHOST="127.0.0.1",
            PGPORT=str(pg.port),
            PGUSER="postgres",
            TASKSTATE_TEST_DB_NAME="postgres",
            TASKSTATE_TEST_BROKER_OPTIONS=FAST_REQUEUE,
        )
        migrate = subprocess.run(
            [sys.executable, "-m", "django", "migrate", "-v", "0"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        worker = start_worker(env, threads=8)
        started.append(worker)

        def rows() -> dict[str, str]:
            return dict(
                pg.query(
                    "SELECT message_id, status FROM taskstate_task WHERE message_id = ANY(%s)",
                    (ids,),
                )
            )

        slow_started = tmp_path / "slow"
        slow = sender.enqueue(
            actors.file_then_sleeps.message(
                str(slow_started), 3.0, for_state={"description": "slow"}
            )
        )
        ids = [slow.message_id]
        wait_for(lambda: rows().get(slow.message_id) == "running", 30, "the slow task's row")

        pg.stop("fast")
        quick_files = [tmp_path / f"quick-{i}" for i in range(3)]
        quick = [
            sender.enqueue(
                actors.leaves_file.message(str(path), for_state={"description": "quick"})
            )
            for path in quick_files
        ]
        failing = sender.enqueue(actors.always_fails.message(for_state={"description": "fails"}))
        ids += [m.message_id for m in [*quick, failing]]
        wait_for(lambda: all(p.exists() for p in quick_files), 30, "the quick tasks to run")
        wait_for(slow_started.exists, 30, "the slow task to run")

        took = stopped_by(worker, "sigterm")
        acked = set(ids) - held(private_redis)
        output = worker.output()
        pg.start()
        found = rows()
        not_final = {i: found.get(i) for i in acked if found.get(i) not in FINAL}
        assert not not_final, f"acked without a final row: {not_final}\n{output}"
        # Stopped within its bound, and nothing promises a repair that cannot come.
        assert took < 30, output
        assert "will repair them" not in output, output

        started.append(start_worker(env, threads=8))
        wait_for(lambda: not held(private_redis), 60, "every message to be acked")
        found = rows()
        assert {i: found.get(i) for i in ids} == {
            slow.message_id: "done",
            **{m.message_id: "done" for m in quick},
            failing.message_id: "failed",
        }
    finally:
        for process in reversed(started):
            process.stop()
        started.clear()
        pg.close()
