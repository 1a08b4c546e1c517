"""Faults under real processes: a worker killed mid-task, Redis and PostgreSQL restarted,
the web process restarted. Services that a test breaks are private ones (tests/support/faults.py);
the shared PostgreSQL keeps the test database of the tests that read rows through the ORM.

Figures for docs/reliability.md are printed with ``-s`` (lines starting with ``FIGURE``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from django.utils import timezone
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from taskstate.core.models import Status, Task
from taskstate.core.states import ABANDONED_ERROR
from taskstate.web import eventstream_repair
from tests.support.faults import (
    PostgresServer,
    RedisServer,
    ResyncingStream,
    StaleTab,
    count_lines,
    fault_env,
    postgres_unavailable,
    wait_for,
)
from tests.support.processes import REPO, Process, child_env, free_port, start_uvicorn, start_worker
from tests.support.sse import session_cookie
from tests.support.tcp_proxy import CuttableProxy
from tests.testapp import tasks as actors

#: RedisBroker options for the tests that wait for a dead worker's message to come back:
#: a worker silent for 3 s counts as dead, and every broker command looks for dead ones.
#: Defaults: 60 s, and one command in a thousand.
FAST_REQUEUE = json.dumps({"heartbeat_timeout": 3000, "maintenance_chance": 1_000_000})


def figure(text: str) -> None:
    print(f"\nFIGURE {text}")


class Children:
    """Every process a test starts, stopped at the end whatever happened."""

    def __init__(self) -> None:
        self.started: list[Process] = []

    def worker(self, env: dict[str, str]) -> Process:
        worker = start_worker(env)
        self.started.append(worker)
        return worker

    def web(self, env: dict[str, str], port: int | None = None) -> tuple[Process, str]:
        port = port or free_port()
        server = start_uvicorn("tests.asgi:application", env, port)
        self.started.append(server)
        return server, f"http://127.0.0.1:{port}"

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


@pytest.fixture
def children() -> Iterator[Children]:
    made = Children()
    try:
        yield made
    finally:
        made.stop_all()


@pytest.fixture
def tabs() -> Iterator[list[ResyncingStream]]:
    opened: list[ResyncingStream] = []
    try:
        yield opened
    finally:
        for tab in opened:
            tab.close()


def send(broker: RedisBroker, actor, *args, **for_state) -> Message:
    message = actor.message(*args, for_state=for_state)
    broker.enqueue(message)
    return message


def row(message: Message) -> Task | None:
    return Task.objects.filter(message_id=message.message_id).first()


def finished(message: Message, timeout: float = 30) -> Task:
    return wait_for(
        lambda: Task.objects.filter(
            message_id=message.message_id, status__in=["done", "failed", "skipped"]
        ).first(),
        timeout,
        f"{message.actor_name} {message.message_id} to finish",
    )


def running(message: Message, timeout: float = 30) -> Task:
    return wait_for(
        lambda: Task.objects.filter(
            message_id=message.message_id, status="running", progress_message="sleeping"
        ).first(),
        timeout,
        f"{message.actor_name} to run and report progress",
    )


def unacked(server: RedisServer, queue: str = "default") -> int:
    """Messages of ``queue`` not acked yet: queued, prefetched or being processed."""
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.hlen(f"dramatiq:{queue}.msgs"))
    finally:
        client.close()


# --- 1. a worker SIGKILLed in the middle of a task ----------------------------------------


def test_killed_workers_message_is_redelivered_and_its_row_ends_done(
    process_env, private_redis, sender, children, tmp_path, user
):
    env = fault_env(
        process_env, tmp_path, private_redis, TASKSTATE_TEST_BROKER_OPTIONS=FAST_REQUEUE
    )
    first = children.worker(env)
    message = send(sender, actors.sleeps, 2.0, user_pk=user.pk, description="killed mid-task")
    started_at = running(message).started_at

    first.kill()
    killed = time.monotonic()
    time.sleep(0.5)
    assert row(message).status == Status.RUNNING  # nothing is left to say otherwise

    children.worker(env)
    task = finished(message, timeout=40)
    figure(
        f"case 1 redelivery: SIGKILL -> done in {time.monotonic() - killed:.1f}s "
        "(heartbeat_timeout=3s, replacement worker started after the kill, task 2s)"
    )
    # The broker ran the message again on the new worker: the same attempt, done.
    assert (task.status, task.attempts, task.error_type) == (Status.DONE, 1, "")
    assert task.started_at == started_at, "the first start stays the task's start"
    assert task.progress == 100 and task.finished_at > started_at
    # The row is written done before Dramatiq acks the message: the ack follows.
    wait_for(lambda: unacked(private_redis) == 0, 10, "the redelivered message's ack")


def test_killed_worker_loses_only_its_unwritten_changes_and_redelivery_repairs_them(
    process_env, private_redis, sender, children, tmp_path, user
):
    """The background writer's window: changes queued but not written die with the process.

    No hook waits for the writer: the running change and the progress report after it
    wait for a batch (120 s here) and are lost; the message was sent without our
    middleware, so there is no row at all until the redelivered message runs.
    """
    held = fault_env(
        process_env,
        tmp_path,
        private_redis,
        TASKSTATE_TEST_BROKER_OPTIONS=FAST_REQUEUE,
        TASKSTATE_TEST_CONSTANTS=json.dumps({"WRITE_MAX_DELAY": 120}),
    )
    first = children.worker(held)
    started = tmp_path / "started"
    message = send(
        sender, actors.file_then_sleeps, str(started), 2.0, user_pk=user.pk, description="lost"
    )
    wait_for(started.exists, 30, "the actor to start")
    first.kill()
    killed = time.monotonic()
    task = row(message)
    assert task is None  # running and the report were queued, lost with the process

    env = fault_env(
        process_env, tmp_path, private_redis, TASKSTATE_TEST_BROKER_OPTIONS=FAST_REQUEUE
    )
    children.worker(env)
    task = finished(message, timeout=40)
    figure(
        f"case 1b unwritten window: SIGKILL with a progress change queued -> row done in "
        f"{time.monotonic() - killed:.1f}s (redelivered; heartbeat_timeout=3s, task 2s)"
    )
    assert (task.status, task.attempts, task.error_type) == (Status.DONE, 1, "")
    assert (task.progress, task.progress_message) == (100, "half way")
    # The row is committed before the ack: the ack follows.
    wait_for(lambda: unacked(private_redis) == 0, 10, "the redelivered message's ack")


def test_cleanup_that_gives_up_first_keeps_the_row_failed_when_the_message_comes_back(
    process_env, private_redis, sender, children, tmp_path, user, settings
):
    """Cleanup before redelivery: the task runs again, but its row stays failed."""
    from taskstate.cleanup import cleanup

    env = fault_env(
        process_env, tmp_path, private_redis, TASKSTATE_TEST_BROKER_OPTIONS=FAST_REQUEUE
    )
    first = children.worker(env)
    message = send(sender, actors.sleeps, 1.0, user_pk=user.pk, description="given up")
    running(message)
    first.kill()

    settings.TASKSTATE = {"RUNNING_TIMEOUT": 60}
    Task.objects.filter(message_id=message.message_id).update(
        updated_at=timezone.now() - timedelta(seconds=61)
    )
    assert cleanup().abandoned_failed == 1
    assert unacked(private_redis) == 1

    worker = children.worker(env)
    wait_for(lambda: unacked(private_redis) == 0, 40, "the redelivered message to be acked")
    task = row(message)
    assert (task.status, task.error_type) == (Status.FAILED, ABANDONED_ERROR)
    assert "Failed to process message" not in worker.output()


# --- 2. Redis restarted under open streams and running tasks ------------------------------


def open_tab(tabs: list[ResyncingStream], base: str, user) -> ResyncingStream:
    tab = ResyncingStream(base, session_cookie(user))
    tabs.append(tab)
    tab.wait(lambda t: t.resyncs >= 1, 30, "the tab to open its stream and resync")
    return tab


def test_short_redis_restart_keeps_streams_open_and_every_final_state_reaches_its_owner(
    process_env, private_redis, sender, children, tabs, tmp_path, user, other_user
):
    env = fault_env(process_env, tmp_path, private_redis)
    worker = children.worker(env)
    _, base = children.web(env)
    owners = (user, other_user)
    tab_of = {owner.pk: open_tab(tabs, base, owner) for owner in owners}

    across = {
        owner.pk: [send(sender, actors.sleeps, 3.0, user_pk=owner.pk) for _ in range(2)]
        for owner in owners
    }
    for messages in across.values():
        for message in messages:
            running(message)

    began = time.monotonic()
    private_redis.restart()
    down = time.monotonic() - began
    after = {
        owner.pk: [
            send(sender, actors.with_progress, 3, user_pk=owner.pk, description=f"after {i}")
            for i in range(3)
        ]
        for owner in owners
    }

    for owner in owners:
        messages = across[owner.pk] + after[owner.pk]
        pks = [finished(m).pk for m in messages]
        assert all(row(m).status == Status.DONE for m in messages)
        tab_of[owner.pk].wait(lambda t, pks=pks: t.shows(pks), 30, "every task of the owner done")
    figure(
        f"case 2 short restart: Redis down {down:.2f}s; "
        f"{sum(len(v) for v in across.values())} tasks running across it and "
        f"{sum(len(v) for v in after.values())} sent after it all shown done, "
        f"settled {time.monotonic() - began:.1f}s after the restart began"
    )
    for tab in tab_of.values():
        assert tab.opened == 1, "the stream stayed open through the restart"
    others = {row(m).pk for m in across[other_user.pk] + after[other_user.pk]}
    assert not others & set(tab_of[user.pk].statuses), "a tab only ever sees its owner's rows"
    assert worker.proc.poll() is None


def test_redis_outage_longer_than_the_listeners_retries_still_reaches_every_owner(
    process_env, private_redis, sender, children, tabs, tmp_path, user, other_user
):
    env = fault_env(process_env, tmp_path, private_redis)
    worker = children.worker(env)
    web, base = children.web(env)
    owners = (user, other_user)
    tab_of = {owner.pk: [open_tab(tabs, base, owner)] for owner in owners}

    before = {owner.pk: send(sender, actors.noop, user_pk=owner.pk) for owner in owners}
    for owner in owners:
        pk = finished(before[owner.pk]).pk
        tab_of[owner.pk][0].wait(lambda t, pk=pk: t.shows([pk]), 15, "delivery before the outage")

    during = {owner.pk: send(sender, actors.sleeps, 1.5, user_pk=owner.pk) for owner in owners}
    for message in during.values():
        running(message)
    private_redis.stop()
    stopped = time.monotonic()
    # Tasks end while Redis is away: the rows are right, their events are lost.
    for message in during.values():
        assert finished(message).status == Status.DONE
    time.sleep(max(0.0, 8.0 - (time.monotonic() - stopped)))
    private_redis.start()
    figure(f"case 2 long outage: Redis down {time.monotonic() - stopped:.1f}s")

    # A page opened after the outage, and tasks sent after it.
    for owner in owners:
        tab_of[owner.pk].append(open_tab(tabs, base, owner))
    after = {owner.pk: send(sender, actors.sleeps, 1.0, user_pk=owner.pk) for owner in owners}
    for message in after.values():
        assert finished(message).status == Status.DONE

    # The worker noticed, once, and went on.
    publish_errors = count_lines(worker, "[ERROR] taskstate: cannot publish task events")
    figure(f"case 2 long outage: worker logged 'cannot publish task events' {publish_errors}x")
    assert 1 <= publish_errors <= 2

    back = time.monotonic()
    for owner in owners:
        pks = [row(m).pk for m in (before[owner.pk], during[owner.pk], after[owner.pk])]
        for tab in tab_of[owner.pk]:
            try:
                tab.wait(lambda t, pks=pks: t.shows(pks), 20, "every task of the owner done")
            except StaleTab as exc:
                web.stop()  # asyncio reports a dead task's exception only when it is collected
                said = [line for line in web.lines if "redis_listener" in line]
                raise StaleTab(f"{exc}; the web process said at shutdown: {said}") from None
    figure(f"case 2 long outage: every tab right {time.monotonic() - back:.1f}s after the tasks")


def test_half_open_event_subscription_is_noticed_and_every_page_resyncs_within_the_bound(
    process_env, private_redis, sender, children, tabs, tmp_path, user
):
    """The web process's subscription goes through a proxy that blackholes it while Redis
    restarts: its connection is left half-open (no reset ever reaches it)."""
    proxy = CuttableProxy(private_redis.port)
    try:
        env = fault_env(process_env, tmp_path, private_redis)
        web_env = {**env, "TASKSTATE_TEST_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}
        children.worker(env)
        web, base = children.web(web_env)
        old = open_tab(tabs, base, user)
        before = send(sender, actors.noop, user_pk=user.pk, description="before")
        pk_before = finished(before).pk
        old.wait(lambda t: t.shows([pk_before]), 15, "delivery before the fault")
        resyncs = old.resyncs

        proxy.blackhole()
        began = time.monotonic()
        private_redis.restart()
        proxy.heal()
        healed = time.monotonic()
        during = send(sender, actors.noop, user_pk=user.pk, description="after the heal")
        pk_during = finished(during).pk

        bound = eventstream_repair.HEALTH_CHECK_INTERVAL + eventstream_repair.REPLY_TIMEOUT
        old.wait(
            lambda t: t.resyncs > resyncs and t.shows([pk_before, pk_during]),
            bound + 10,
            "the open page to be told to resync",
        )
        reset_at = time.monotonic()
        assert old.opened == 1, "the stream stayed open: a stream-reset, not a reconnect"

        new = open_tab(tabs, base, user)
        after = send(sender, actors.noop, user_pk=user.pk, description="after the reset")
        pk_after = finished(after).pk
        for tab in (old, new):
            tab.wait(lambda t: t.shows([pk_after]), 15, "events to flow again")
        delivered = time.monotonic()

        client = redis.Redis.from_url(private_redis.url)
        try:
            assert client.pubsub_numsub(eventstream_repair.PUBSUB_CHANNEL)[0][1] == 1
        finally:
            client.close()
        lost = count_lines(web, "taskstate: lost the event pub/sub")
        back = count_lines(web, "taskstate: event pub/sub is back")
        figure(
            f"case 2 half-open subscription: blackholed, Redis restarted in "
            f"{healed - began:.2f}s, healed; open page reset {reset_at - began:.1f}s after "
            f"the blackhole (bound {bound:g}s after the last thing heard); new and old pages "
            f"got the next event {delivered - reset_at:.1f}s later; 'lost' logged {lost}x, "
            f"'back' {back}x"
        )
        assert (lost, back) == (1, 1), web.output()
    finally:
        proxy.close()


# --- 3. PostgreSQL restarted under a running worker -----------------------------------------


def test_postgres_restart_under_a_running_worker(private_redis, sender, children, tmp_path):
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
        worker = children.worker(env)

        def rows(messages: list[Message]) -> dict[str, tuple[str, object]]:
            ids = [m.message_id for m in messages]
            found = pg.query(
                "SELECT message_id, status, result FROM taskstate_task WHERE message_id = ANY(%s)",
                (ids,),
            )
            return {message_id: (status, result) for message_id, status, result in found}

        def all_done(messages: list[Message]) -> bool:
            found = rows(messages)
            return len(found) == len(messages) and all(s == "done" for s, _ in found.values())

        before = [send(sender, actors.returns, i, description=f"before {i}") for i in range(5)]
        wait_for(lambda: all_done(before), 30, "tasks before the outage to be recorded")
        straddling = send(sender, actors.sleeps, 2.0, description="ends during the outage")
        wait_for(lambda: rows([straddling]), 30, "the long task to start")

        pg.stop("fast")
        stopped = time.monotonic()
        files = [tmp_path / f"during-{i}" for i in range(30)]
        during = [send(sender, actors.leaves_file, str(f), description="during") for f in files]
        # Three threads run a message each (the fourth runs the long task), and each holds
        # its message's ack until the final row is committed: nothing is acked meanwhile.
        wait_for(lambda: sum(f.exists() for f in files) >= 3, 30, "three bodies to run")
        ran = sum(f.exists() for f in files)
        held = unacked(private_redis)
        assert ran <= 4 and held == len(during) + 1, (ran, held)
        assert unacked(private_redis, "default.XQ") == 0, "no message was dead-lettered"

        pg.start()
        restarted = time.monotonic()
        after = [send(sender, actors.returns, i, description=f"after {i}") for i in range(5)]
        wait_for(lambda: unacked(private_redis) == 0, 60, "every message to be acked")
        wait_for(lambda: all_done(after), 30, "tasks after the restart to be recorded")
        resumed = time.monotonic() - restarted

        assert {result for _, result in rows(after).values()} == set(range(5))
        # The changes that fell in the outage waited in the writer's queue (merged per
        # message) and were written once the database answered, before their acks: every
        # row ends right, though the sender's own writes were lost.
        assert all_done([*during, straddling])
        assert {result for _, result in rows(during).values()} == {str(f) for f in files}
        # One line per record through dramatiq's root handler ("[taskstate] [LEVEL]").
        cannot = count_lines(worker, "[ERROR] taskstate: cannot write task state")
        again = count_lines(worker, "[WARNING] taskstate: database 'default' answers again")
        figure(
            f"case 3 PostgreSQL restart: {ran} bodies ran while it was down "
            f"({restarted - stopped:.1f}s), their acks held, {held} messages "
            f"unacked; everything acked and recorded {resumed:.1f}s after the restart; "
            f"'cannot write task state' logged {cannot}x, 'answers again' {again}x"
        )
        assert 1 <= cannot <= 2, worker.output()
        assert again == cannot, worker.output()
        assert "Failed to process message" not in worker.output()
        assert worker.proc.poll() is None
        assert count_lines(worker, "is ready for action") == 1, "the worker never restarted"
    finally:
        children.stop_all()
        pg.close()


# --- 4. the web process restarted -------------------------------------------------------------


def test_restarted_web_process_tab_reconnects_and_shows_a_task_that_ended_while_it_was_down(
    process_env, private_redis, sender, children, tabs, tmp_path, user
):
    env = fault_env(process_env, tmp_path, private_redis)
    children.worker(env)
    port = free_port()
    web, base = children.web(env, port)
    tab = open_tab(tabs, base, user)

    message = send(sender, actors.sleeps, 8.0, user_pk=user.pk, description="outlives the web")
    pk = running(message).pk
    tab.wait(lambda t: t.statuses.get(pk) == "running", 15, "the tab to show it running")

    web.stop()
    assert row(message).status == Status.RUNNING, "the task must end while the web is down"
    task = finished(message)
    assert task.status == Status.DONE
    time.sleep(0.5)
    assert tab.statuses[pk] == "running", "no web process, no event"

    _, base = children.web(env, port)
    up = time.monotonic()
    tab.wait(lambda t: t.shows([pk]), 15, "the tab to reconnect and resync")
    figure(
        f"case 4 web restart: tab showed the task done {time.monotonic() - up:.2f}s after "
        f"uvicorn was back (streams opened: {tab.opened}, resyncs: {tab.resyncs})"
    )
    assert tab.opened == 2 and tab.resyncs >= 2


# --- 5. PostgreSQL hangs (SIGSTOP): nothing waits for it forever ------------------------------

#: A sender process: ``send(for_state=...)`` through StateMiddleware onto the hung
#: database; prints how long each call took, as JSON.
_TIMED_SENDS = """
import faulthandler, json, sys, time
import django
faulthandler.dump_traceback_later(float(sys.argv[2]), exit=True)  # where it hangs, if it does
django.setup()
from tests.testapp import tasks
took = []
for i in range(3):
    start = time.monotonic()
    tasks.leaves_file.send(sys.argv[1] + f"/sent-{i}", for_state={"description": f"sent {i}"})
    took.append(time.monotonic() - start)
print(json.dumps(took))
"""


def test_hung_postgres_neither_stops_the_worker_nor_blocks_send(
    private_redis, sender, children, tmp_path
):
    if reason := postgres_unavailable():
        pytest.skip(reason)
    pg = PostgresServer()
    hang = 30.0
    try:
        env = fault_env(
            child_env(),
            tmp_path,
            private_redis,
            PGHOST="127.0.0.1",
            PGPORT=str(pg.port),
            PGUSER="postgres",
            TASKSTATE_TEST_DB_NAME="postgres",
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
        worker = children.worker(env)
        warm = [send(sender, actors.returns, i) for i in range(4)]
        wait_for(
            lambda: len(pg.query("SELECT 1 FROM taskstate_task WHERE status = 'done'")) == 4,
            30,
            "the worker's connections to open",
        )

        pg.pause()
        stopped = time.monotonic()
        try:
            # More tracked messages than worker threads first, then untracked ones.
            tracked = [
                send(sender, actors.leaves_file, str(tmp_path / f"tracked-{i}"), description="t")
                for i in range(8)
            ]
            untracked = [
                sender.enqueue(actors.leaves_file.message(str(tmp_path / f"untracked-{i}")))
                for i in range(10)
            ]
            sending = subprocess.Popen(
                [sys.executable, "-c", _TIMED_SENDS, str(tmp_path), str(hang - 5)],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                out, err = sending.communicate(timeout=hang - 3)
            except subprocess.TimeoutExpired:
                sending.kill()
                out, err = sending.communicate()
                pytest.fail(f"send() still blocked after {hang - 3:.0f}s of the hang:\n{err}")
            assert sending.returncode == 0, err
            took = json.loads(out)
            ran = lambda prefix, n: sum(  # noqa: E731
                (tmp_path / f"{prefix}-{i}").exists() for i in range(n)
            )
            # The first tracked messages run, one per thread, and each thread then holds
            # its message's ack until the row is committed: the rest wait for the database.
            wait_for(lambda: ran("tracked", 8) == 4, 20, "a tracked body on every thread")
            during = (ran("tracked", 8), ran("untracked", 10), unacked(private_redis))
        finally:
            remaining = hang - (time.monotonic() - stopped)
            if remaining > 0:
                time.sleep(remaining)  # the hang lasts its full length, whatever happened
            pg.resume()
        resumed = time.monotonic()
        wait_for(lambda: unacked(private_redis) == 0, 60, "every message to be acked")
        after = send(sender, actors.returns, 7, description="after the hang")
        wait_for(
            lambda: pg.query(
                "SELECT 1 FROM taskstate_task WHERE message_id = %s AND status = 'done'",
                (after.message_id,),
            ),
            30,
            "tracking to come back",
        )
        back = time.monotonic() - resumed
        done = pg.query(
            "SELECT count(*) FROM taskstate_task WHERE message_id = ANY(%s) AND status = 'done'",
            ([m.message_id for m in tracked],),
        )[0][0]
        cannot = count_lines(worker, "[ERROR] taskstate: cannot write task state")
        again = count_lines(worker, "[WARNING] taskstate: database 'default' answers again")
        figure(
            f"case 5 PostgreSQL hung {hang:.0f}s: during it {during[0]}/8 tracked and "
            f"{during[1]}/10 untracked actors ran, {during[2]} messages unacked; send() took "
            f"{max(took):.1f}s at most ({', '.join(f'{s:.1f}' for s in took)}); everything "
            f"acked and tracking back {back:.1f}s after; 'cannot write task state' logged "
            f"{cannot}x, 'answers again' {again}x"
        )
        assert len(warm) == 4 and len(tracked) == 8 and len(untracked) == 10
        # Nothing acked without its row: every message sent was held during the hang (the
        # sender process's too).
        assert during == (4, 0, 8 + 10 + len(took)), during
        assert ran("tracked", 8) == 8 and ran("untracked", 10) == 10 and done == 8
        # Each send() within its bound: DB_CONNECT_TIMEOUT (5 s) for the connection it
        # opens, or DB_STATEMENT_TIMEOUT + 1 s (6 s) on an open one; slack for a busy host.
        assert max(took) < 9, took
        assert 1 <= cannot <= 2, worker.output()
        assert "Failed to process message" not in worker.output()
    finally:
        with contextlib.suppress(Exception):
            pg.resume()
        children.stop_all()
        pg.close()
