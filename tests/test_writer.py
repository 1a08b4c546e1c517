"""The background state writer (taskstate.writer): batches, merges, announcements, waits."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from django.db import connection

from taskstate import transitions as t
from taskstate.for_state import Origin, TaskIdentity
from taskstate.models import Status, Task
from taskstate.signals import progress_committed, task_changed
from taskstate.writer import writer
from tests.support.factories import make_task
from tests.support.faults import wait_for
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)

SENT = datetime(2026, 1, 1, tzinfo=timezone.utc)


def origin(message_id: str, *, language: str = "", user_pk: Any = None) -> Origin:
    return Origin(
        message_id=message_id,
        actor_name="export",
        queue_name="default",
        sent_at=SENT,
        identity=TaskIdentity(user_pk=user_pk, description="Export", app_name="", model_name=""),
        language=language,
    )


def running(message_id: str, attempt: int = 1, **values: Any) -> t.Change:
    return t.Change(
        origin(message_id),
        Status.RUNNING,
        t.running_order(attempt),
        {"attempts": attempt, "started_at": SENT, "progress": 0, **values},
        keep=("started_at",),
    )


def done(message_id: str, **values: Any) -> t.Change:
    return t.Change(
        origin(message_id),
        Status.DONE,
        t.TERMINAL_ORDER,
        {"attempts": 1, "progress": 100, "finished_at": SENT, **values},
        keep=("started_at",),
    )


def inserts(count_queries: Any) -> list[str]:
    return count_queries.starting("INSERT")


def several_rows(sql: str, params: Any) -> bool:
    """Whether the statement upserts more than one row: a VALUES list of several, or, on
    PostgreSQL, arrays of several values each."""
    if "INSERT INTO" not in sql:
        return False
    if " unnest(" in sql:
        return any(isinstance(p, list) and len(p) >= 2 for p in params or ())
    return "), (" in sql


# --- write_batch ---------------------------------------------------------------------


def test_a_batch_of_many_messages_is_one_statement_and_returns_each_row(count_queries):
    t.write(origin("m-old"), Status.DONE, t.TERMINAL_ORDER, {"attempts": 1})
    count_queries.statements = []
    changes = [running(f"m-{i}") for i in range(5)] + [running("m-old")]
    rows = t.write_batch(changes)
    assert [row.message_id if row else None for row in rows] == [
        "m-0",
        "m-1",
        "m-2",
        "m-3",
        "m-4",
        None,  # refused: the row is done already
    ]
    assert len(inserts(count_queries)) == 1
    # MySQL and MariaDB read the batch back (no RETURNING after an upsert).
    reads = 1 if connection.vendor == "mysql" else 0
    assert len(count_queries.statements) == 1 + reads, count_queries.statements
    assert Task.objects.get(message_id="m-old").status == Status.DONE
    assert Task.objects.filter(status=Status.RUNNING).count() == 5


def test_a_batch_over_the_database_s_parameter_limit_is_split_in_one_transaction(
    count_queries, monkeypatch
):
    # Over 30 columns a row: 100 parameters take 2 or 3 rows a statement (SQLite before
    # 3.32 takes 999 in all; a default batch of 200 rows carries over 6,000).
    monkeypatch.setattr(t, "_max_params", lambda connection: 100)
    count_queries.statements = []
    rows = t.write_batch([running(f"m-split-{i}") for i in range(7)])
    assert [row.message_id for row in rows if row] == [f"m-split-{i}" for i in range(7)]
    if connection.vendor == "postgresql":
        # Arrays, one parameter per column, however many rows: nothing to split.
        assert len(inserts(count_queries)) == 1
    else:
        assert 3 <= len(inserts(count_queries)) <= 4
    assert Task.objects.filter(message_id__startswith="m-split-").count() == 7


def test_batch_rows_carry_the_language_and_the_retry_columns(user):
    old = make_task(status=Status.FAILED, user=user)
    change = t.Change(
        origin("m-fr", language="fr", user_pk=user.pk),
        Status.RUNNING,
        t.running_order(1),
        {
            "attempts": 1,
            "started_at": SENT,
            "retry_message": {"actor_name": "export", "args": [], "kwargs": {}, "options": {}},
            "retry_of_id": old.pk,
        },
        keep=("started_at", "retry_message", "retry_of_id"),
    )
    (task,) = t.write_batch([change])
    assert task is not None
    row = Task.objects.get(message_id="m-fr")
    assert (row.language, row.retry_of_id, row.user_id) == ("fr", old.pk, user.pk)
    assert row.retry_message == {"actor_name": "export", "args": [], "kwargs": {}, "options": {}}

    # A later change keeps them as first written (COALESCE), as write() does.
    later = t.Change(
        origin("m-fr", language="fr"),
        Status.DONE,
        t.TERMINAL_ORDER,
        {"attempts": 1, "retry_message": None, "retry_of_id": None},
        keep=("retry_message", "retry_of_id"),
    )
    t.write_batch([later])
    row.refresh_from_db()
    assert row.status == Status.DONE
    assert row.retry_of_id == old.pk and row.retry_message is not None


def test_a_retry_of_a_deleted_task_leaves_no_link():
    change = running("m-link", retry_of_id=987_654)
    (task,) = t.write_batch([change])
    assert task is not None and task.retry_of_id is None


def test_a_running_change_keeps_the_error_of_the_attempt_before():
    retrying = t.Change(
        origin("m-err"),
        Status.RETRYING,
        t.retrying_order(1),
        {"attempts": 1, "error_type": "ValueError", "error_message": "no", "traceback": "tb"},
    )
    t.write_batch([retrying])
    t.write_batch([running("m-err", attempt=2)])
    row = Task.objects.get(message_id="m-err")
    assert (row.status, row.attempts) == (Status.RUNNING, 2)
    assert (row.error_type, row.error_message, row.traceback) == ("ValueError", "no", "tb")


def test_a_cancel_request_refuses_the_attempt_s_later_running_and_progress_changes():
    (task,) = t.write_batch([running("m-c")])
    assert task is not None
    assert t.request_cancel(task.pk)
    progress = running("m-c", progress=40)
    progress.progress_only = True
    assert t.write_batch([progress]) == [None]
    row = Task.objects.get(message_id="m-c")
    assert row.progress == 0 and row.is_cancelling


def test_a_value_the_database_refuses_costs_only_its_own_row(caplog):
    bad = done("m-bad", result={"n": float("nan")})  # not JSON: refused by every backend
    good = done("m-good", result=1)
    rows = t.write_batch([bad, good])
    assert rows[0] is not None and rows[1] is not None
    assert Task.objects.get(message_id="m-bad").result is None
    assert Task.objects.get(message_id="m-good").result == 1


# --- merging -------------------------------------------------------------------------


def test_changes_of_one_message_merge_into_the_furthest_with_the_first_start():
    told: list[str] = []
    first = running("m-1")
    first.notify.append(lambda task, written: told.append("running"))
    later = done("m-1", started_at=datetime(2027, 1, 1, tzinfo=timezone.utc))
    later.notify.append(lambda task, written: told.append("done"))
    merged = first.then(later)
    assert (merged.status, merged.order) == (Status.DONE, t.TERMINAL_ORDER)
    assert merged.values["started_at"] == SENT  # kept, as COALESCE keeps it
    assert merged.values["progress"] == 100

    # A step backwards merged after a terminal change changes nothing but who is told.
    stale = merged.then(running("m-1"))
    assert stale.status == Status.DONE and stale.values == merged.values
    (task,) = t.write_batch([stale])
    for notify in stale.notify:
        notify(task, True)
    assert told == ["running", "done"]
    assert Task.objects.get(message_id="m-1").status == Status.DONE


def test_a_progress_merged_after_a_running_change_is_still_the_running_change():
    progress = running("m-p", progress=30)
    progress.progress_only = True
    merged = running("m-p").then(progress)
    assert not merged.progress_only  # announced as the running row, with its progress
    assert merged.values["progress"] == 30


# --- the writer thread, with a worker ---------------------------------------------------


def test_the_workers_changes_share_batches(run_all, user, count_queries, settings):
    # Batches wait (60 s) for a change someone waits for, or for the test's flush.
    settings.TASKSTATE = {**settings.TASKSTATE, "WRITE_MAX_DELAY": 60}
    messages = [actors.noop.send(for_state={"user_pk": user.pk}) for _ in range(6)]
    run_all()
    rows = Task.objects.filter(message_id__in=[m.message_id for m in messages])
    assert {row.status for row in rows} == {Status.DONE} and len(rows) == 6
    # Immediate writes: 6 enqueued + 6 running + 6 done = 18 statements. Here each running
    # write has its batch written at once (taking whatever else waits along), and the
    # done changes wait: at most 6 running batches and one last batch.
    assert len(inserts(count_queries)) <= 6 + 6 + 1, inserts(count_queries)
    assert any(several_rows(sql, params) for sql, params in count_queries.calls)


def test_progress_is_written_and_announced_with_the_task_and_its_group(
    broker, worker, run_all, user
):
    group = make_task(kind="group", status=Status.ENQUEUED, state_order=1, user=user)
    heard: list[dict[str, Any]] = []
    got = threading.Event()

    def on_progress(sender: Any, **kwargs: Any) -> None:
        heard.append(kwargs)
        got.set()

    progress_committed.connect(on_progress)
    actors.RELEASE.clear()
    actors.REPORT.clear()
    try:
        message = actors.reports_huge_progress.send(
            10, for_state={"user_pk": user.pk, "group": group.pk}
        )
        wait_for(
            lambda: Task.objects.filter(message_id=message.message_id, status="running").exists(),
            what="the running row",
        )
        actors.REPORT.set()
        assert got.wait(20), "no progress announced"
        # Announced after its commit: the row says so while the actor still runs.
        task = Task.objects.get(message_id=message.message_id)
        assert (task.status, task.progress) == (Status.RUNNING, 50)
    finally:
        actors.REPORT.set()
        actors.RELEASE.set()
        progress_committed.disconnect(on_progress)
    run_all()
    assert heard[0]["task_pk"] == task.pk
    assert heard[0]["group_pk"] == group.pk
    assert heard[0]["user_pk"] == user.pk
    assert (heard[0]["percent"], heard[0]["message"]) == (50, "m" * 10)
    assert Task.objects.get(message_id=message.message_id).status == Status.DONE


def test_rows_are_announced_once_each_in_the_order_written(run_all, user):
    announced: list[tuple[str, str, int]] = []

    def receiver(sender: Any, *, task: Task, **kwargs: Any) -> None:
        announced.append((task.message_id, task.status, task.state_order))

    task_changed.connect(receiver)
    try:
        message = actors.always_fails.send(for_state={"user_pk": user.pk})
        run_all()
    finally:
        task_changed.disconnect(receiver)
    mine = [
        (status, order)
        for message_id, status, order in announced
        if message_id == message.message_id
    ]
    # Each announced row is further on than the one before (written rows only, in the
    # order committed); the last is the end, announced once.
    orders = [order for _, order in mine]
    assert orders == sorted(set(orders)), mine
    assert mine[-1][0] == "failed" and [s for s, _ in mine].count("failed") == 1


def test_a_worker_that_looked_lately_starts_a_message_without_a_read_or_a_wait(
    broker, worker, run_all, user, count_queries
):
    from taskstate.writer import cancels

    assert cancels.refresh()  # as the writer does with its batches
    count_queries.statements = []
    message = actors.runs_once.send("writer-key", for_state={"user_pk": user.pk})
    run_all()
    # Nothing read to look for a cancel, no batch waited for; MySQL and MariaDB read each
    # batch back.
    if connection.vendor != "mysql":
        assert count_queries.starting("SELECT") == []
    assert cancels.worker_reads == 0
    assert Task.objects.get(message_id=message.message_id).status == Status.DONE


def test_an_idle_worker_looks_once_then_the_writer_keeps_what_it_knows_fresh(
    broker, worker, run_all, user, settings
):
    from taskstate.writer import cancels

    settings.TASKSTATE = {**settings.TASKSTATE, "CANCEL_CHECK_INTERVAL": 3.0}
    actors.runs_once.send("idle-1", for_state={"user_pk": user.pk})
    run_all()
    assert writer.flush(10)
    assert (cancels.reads, cancels.worker_reads) == (1, 1)  # nothing known yet: one look
    time.sleep(1.6)  # older than half the interval: the next batch refreshes it
    actors.runs_once.send("idle-2", for_state={"user_pk": user.pk})
    run_all()
    assert writer.flush(10)
    assert (cancels.reads, cancels.worker_reads) == (2, 1)
    assert cancels.age() < 1.5


def test_flush_writes_what_waits_and_release_lets_go_of_the_connection(settings):
    settings.TASKSTATE = {**settings.TASKSTATE, "WRITE_MAX_DELAY": 60}
    assert writer.submit(running("m-flush"))
    assert writer.pending() == 1
    assert not Task.objects.filter(message_id="m-flush").exists()
    assert writer.flush(10)
    assert writer.pending() == 0
    assert Task.objects.get(message_id="m-flush").status == Status.RUNNING
    writer.release()


def test_write_and_wait_returns_the_row_as_written():
    task, written = writer.write_and_wait(running("m-wait"), 10)
    assert written and task is not None
    assert (task.message_id, task.status) == ("m-wait", Status.RUNNING)
    task, written = writer.write_and_wait(running("m-wait", progress=5), 10)
    assert written and task is not None and task.progress == 5
    t.write_batch([done("m-wait")])
    task, written = writer.write_and_wait(running("m-wait"), 10)
    assert written and task is None  # refused: done is final


# --- CancelWatch: what a process knows of cancel requests ------------------------------


def test_the_first_look_finds_every_request_a_worker_may_still_meet(user):
    from datetime import timedelta

    from django.utils import timezone

    from taskstate.writer import cancels

    now = timezone.now()
    long_ago = now - timedelta(days=3)
    make_task(message_id="queued-asked", status=Status.ENQUEUED, cancel_requested_at=long_ago)
    make_task(
        message_id="cancelled-ahead",
        status=Status.CANCELLED,
        cancel_requested_at=long_ago,
        finished_at=long_ago,
        due_at=now + timedelta(hours=1),
    )
    make_task(message_id="cancelled-lately", status=Status.CANCELLED, cancel_requested_at=now)
    make_task(
        message_id="cancelled-long-ago",
        status=Status.CANCELLED,
        cancel_requested_at=long_ago,
        finished_at=long_ago,
    )
    make_task(message_id="never-asked", status=Status.ENQUEUED)

    assert cancels.refresh()
    known = {m for m in ("queued-asked", "cancelled-ahead", "cancelled-lately") if cancels.known(m)}
    assert known == {"queued-asked", "cancelled-ahead", "cancelled-lately"}
    assert not cancels.known("cancelled-long-ago") and not cancels.known("never-asked")

    # Later looks read only what was asked since the last one (with an overlap).
    make_task(message_id="asked-now", status=Status.RUNNING, cancel_requested_at=now)
    assert cancels.refresh()
    assert cancels.known("asked-now")


def test_the_watch_reads_nothing_while_the_database_is_failing(monkeypatch):
    from taskstate import writer as writer_module

    monkeypatch.setattr(writer_module, "database_down", lambda: True)
    assert not writer_module.cancels.requested("m-down")
    assert writer_module.cancels.reads == 0


# --- the bound: a database that is away -----------------------------------------------


def test_an_outage_fills_the_queue_to_its_bound_then_merges_and_recovery_writes_it_all(
    monkeypatch, caplog
):
    from taskstate import writer as writer_module

    monkeypatch.setattr(writer_module, "MAX_PENDING", 3)
    monkeypatch.setattr(writer_module, "FIRST_RETRY_PAUSE", 0.05)
    monkeypatch.setattr(writer_module, "MAX_RETRY_PAUSE", 0.05)
    real_write = writer_module.write_batch
    tries: list[int] = []

    def away(batch: list[t.Change]) -> list[Any]:
        tries.append(len(batch))
        raise t.Outage("the database is away")

    monkeypatch.setattr(writer_module, "write_batch", away)
    for n in range(3):
        assert writer.submit(running(f"m-out-{n}"))
    wait_for(lambda: len(tries) >= 2, 10, "the writer to try, fail and try again")

    # Full: a new message's change is dropped at once (no wait, no growth), logged once.
    started = time.monotonic()
    assert not writer.submit(running("m-out-new"))
    assert not writer.submit(done("m-out-new-2"))
    assert time.monotonic() - started < 0.5
    assert writer.pending() == 3
    full = [r for r in caplog.records if "further messages are dropped" in r.getMessage()]
    assert len(full) == 1
    # A message already waiting still takes its newest state.
    assert writer.submit(running("m-out-1", progress=40))
    assert writer.submit(done("m-out-2"))
    assert writer.pending() == 3

    monkeypatch.setattr(writer_module, "write_batch", real_write)
    assert writer.flush(10)
    rows = {task.message_id: task for task in Task.objects.filter(message_id__startswith="m-out")}
    assert set(rows) == {"m-out-0", "m-out-1", "m-out-2"}
    assert rows["m-out-0"].status == Status.RUNNING
    assert (rows["m-out-1"].status, rows["m-out-1"].progress) == (Status.RUNNING, 40)
    assert rows["m-out-2"].status == Status.DONE
    # Room again: new messages are taken.
    assert writer.submit(running("m-out-after"))
    assert writer.flush(10)
    assert Task.objects.filter(message_id="m-out-after").exists()


# --- shutdown -------------------------------------------------------------------------


def test_a_worker_stopping_writes_what_waits_without_waiting_for_the_delay(broker, user, settings):
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from tests.support.workers import stop_worker

    settings.TASKSTATE = {**settings.TASKSTATE, "WRITE_MAX_DELAY": 60}
    w = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    w.start()
    try:
        message = actors.runs_once.send("m-stop", for_state={"user_pk": user.pk})
        if isinstance(broker, StubBroker):
            broker.join("default", timeout=30_000, fail_fast=False)
        else:
            broker.join("default", timeout=30_000)
        w.join()
        assert Task.objects.get(message_id=message.message_id).status == Status.ENQUEUED
        assert writer.pending() == 1  # its end waits for the 60 s delay
    finally:
        started = time.monotonic()
        stop_worker(broker, w)  # after_worker_shutdown flushes the writer
    assert time.monotonic() - started < 10
    assert writer.pending() == 0
    assert Task.objects.get(message_id=message.message_id).status == Status.DONE


def test_a_task_that_ends_while_its_worker_stops_is_written_by_the_stop(broker, user, settings):
    """Dramatiq sends before_worker_shutdown before it waits for the running actors and
    the consumers' acks: what they hand over is written by after_worker_shutdown."""
    import dramatiq

    from tests.support.workers import stop_worker

    settings.TASKSTATE = {**settings.TASKSTATE, "WRITE_MAX_DELAY": 60}
    w = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    w.start()
    try:
        message = actors.paced.send(2, 0.3, for_state={"user_pk": user.pk})
        # Its running change waits in the queue (60 s delay): the actor has started.
        wait_for(lambda: writer.pending() == 1, 30, "the actor to start")
    finally:
        stop_worker(broker, w)  # waits for the actor to end, then for its ack
    assert writer.pending() == 0
    task = Task.objects.get(message_id=message.message_id)
    assert (task.status, task.result) == (Status.DONE, 2)


def test_shutdown_with_the_database_away_gives_up_within_its_bound_and_says_so(monkeypatch, caplog):
    from taskstate import writer as writer_module

    tries: list[int] = []

    def away(batch: list[t.Change]) -> list[Any]:
        tries.append(len(batch))
        raise t.Outage("the database is away")

    monkeypatch.setattr(writer_module, "write_batch", away)
    assert writer.submit(running("m-away-0"))
    assert writer.submit(running("m-away-1"))
    started = time.monotonic()
    writer.shutdown(0.5)
    assert time.monotonic() - started < 2
    # Tried again every FLUSH_RETRY_PAUSE (0.1 s) meanwhile, not in a tight loop.
    assert 1 <= len(tries) <= 8, len(tries)
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("2 messages' last state changes could not be written" in m for m in said), said
    # The changes are still there: written once the database is back.
    monkeypatch.undo()
    assert writer.flush(10)
    assert Task.objects.filter(message_id__startswith="m-away").count() == 2


# --- CancelWatch under faults, async actors and many requests ---------------------------


def test_one_failed_read_serves_every_thread_that_waited_for_it(monkeypatch, settings):
    from taskstate import writer as writer_module

    settings.TASKSTATE = {**settings.TASKSTATE, "CANCEL_CHECK_INTERVAL": 0.01}
    gate, calls = threading.Event(), []

    def hung_then_failed(since: Any) -> None:
        calls.append(since)
        gate.wait(10)
        return None  # the database could not be read

    monkeypatch.setattr(writer_module, "cancels_since", hung_then_failed)
    monkeypatch.setattr(writer_module, "database_down", lambda: False)
    watch = writer_module.CancelWatch()
    answers: list[bool] = []
    threads = [
        threading.Thread(target=lambda: answers.append(watch.requested("m-hung"))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(calls) == 1, 10, "the first read")
    time.sleep(0.2)  # the other three wait for it
    gate.set()
    for thread in threads:
        thread.join(10)
    assert answers == [False] * 4
    assert len(calls) == 1, "each waiting thread read again"


def test_an_async_actor_s_look_never_reads_in_the_event_loop(monkeypatch, settings):
    import asyncio

    from taskstate import writer as writer_module
    from taskstate.handoff import handoff

    settings.TASKSTATE = {**settings.TASKSTATE, "CANCEL_CHECK_INTERVAL": 0.01}
    readers: list[int] = []

    def read(since: Any) -> list[str]:
        readers.append(threading.get_ident())
        return ["m-async"]

    monkeypatch.setattr(writer_module, "cancels_since", read)
    monkeypatch.setattr(writer_module, "database_down", lambda: False)
    watch = writer_module.CancelWatch()

    async def actor_look() -> tuple[bool, int]:
        return watch.requested("m-async"), threading.get_ident()

    known, loop_thread = asyncio.run(actor_look())
    assert not known  # nothing known yet, and no read here
    assert handoff.flush(10)
    assert readers and loop_thread not in readers
    assert watch.known("m-async")  # read by another thread: the next look sees it


def test_requests_forgotten_at_the_bound_are_read_back_by_the_next_first_look(monkeypatch):
    from taskstate import writer as writer_module

    monkeypatch.setattr(writer_module, "MAX_KNOWN_CANCELS", 4)
    looks: list[Any] = []
    answers = iter([["a", "b", "c"], ["d", "e"], ["a", "b", "c", "d", "e"]])

    def read(since: Any) -> list[str]:
        looks.append(since)
        return next(answers)

    monkeypatch.setattr(writer_module, "cancels_since", read)
    watch = writer_module.CancelWatch()
    assert watch.refresh()  # first look: a, b, c
    assert watch.refresh()  # d, e: over the bound, the oldest half (a, b) forgotten
    assert not watch.known("a") and watch.known("d")
    assert watch.refresh()
    assert looks[0] is None and looks[1] is not None
    assert looks[2] is None, "the look after forgetting must be a first look"
    assert watch.known("a")


def test_rows_written_one_by_one_before_an_outage_are_announced_not_lost(monkeypatch):
    from django.db import DatabaseError, OperationalError

    from taskstate import writer as writer_module

    monkeypatch.setattr(writer_module, "FIRST_RETRY_PAUSE", 0.05)
    real_once = t._batch_once
    calls: list[int] = []

    def refused_then_away(alias: str, changes: Any) -> Any:
        calls.append(len(changes))
        if len(calls) == 1:
            raise DatabaseError("a value refused: one by one")  # the whole batch
        if len(calls) == 3:
            raise OperationalError("the database went away")  # the second row alone
        return real_once(alias, changes)

    monkeypatch.setattr(t, "_batch_once", refused_then_away)
    announced: list[tuple[str, str]] = []

    def receiver(sender: Any, task: Task, **kwargs: Any) -> None:
        announced.append((task.message_id, task.status))

    task_changed.connect(receiver)
    try:
        batch = [done("m-part-0"), done("m-part-1"), done("m-part-2")]
        writer._write(batch)  # in this thread: the batch the writer thread would write
        # The first row is committed: announced now, and not queued again.
        assert announced == [("m-part-0", "done")]
        assert Task.objects.get(message_id="m-part-0").status == Status.DONE
        assert writer.pending() == 2
        monkeypatch.setattr(t, "_batch_once", real_once)
        assert writer.flush(10)
    finally:
        task_changed.disconnect(receiver)
    assert sorted(announced) == [(f"m-part-{i}", "done") for i in range(3)]
