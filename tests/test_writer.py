"""The background state writer (taskstate.worker.writer): batches, merges, announcements, waits."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from django.db import connection
from dramatiq.middleware import Middleware

from taskstate.core import conf, threads
from taskstate.core import transitions as t
from taskstate.core.for_state import Origin, TaskIdentity
from taskstate.core.models import Status, Task
from taskstate.core.signals import progress_committed, task_changed
from taskstate.core.states import ENQUEUED_ORDER, TERMINAL_ORDER, retrying_order, running_order
from taskstate.worker.writer import writer
from tests.support.factories import make_task
from tests.support.faults import wait_for
from tests.support.processes import passes_in_forked_child
from tests.support.writes import write_one
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
        running_order(attempt),
        {"attempts": attempt, "started_at": SENT, "progress": 0, **values},
        keep=("started_at",),
    )


def done(message_id: str, **values: Any) -> t.Change:
    return t.Change(
        origin(message_id),
        Status.DONE,
        TERMINAL_ORDER,
        {"attempts": 1, "progress": 100, "finished_at": SENT, **values},
        keep=("started_at",),
    )


def inserts(count_queries: Any) -> list[str]:
    return count_queries.starting("INSERT")


# --- write_batch ---------------------------------------------------------------------


def test_a_batch_of_many_messages_is_one_statement_and_returns_each_row(count_queries):
    write_one(origin("m-old"), Status.DONE, TERMINAL_ORDER, {"attempts": 1})
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


def test_rows_of_one_batch_keep_their_own_columns_and_take_every_default(django_user_model):
    user = django_user_model.objects.create(username="batch-owner")
    sent_at = datetime(2026, 2, 1, tzinfo=timezone.utc)
    changes = [
        t.Change(
            Origin(
                message_id=f"m-own-{i}",
                actor_name=f"actor-{i}",
                queue_name=f"queue-{i}",
                sent_at=sent_at + timedelta(seconds=i),
                identity=TaskIdentity(
                    user_pk=user.pk if i else None,
                    description=f"Row {i}",
                    app_name=f"app{i}",
                    model_name=f"model{i}",
                ),
                language=f"l{i}",
            ),
            Status.ENQUEUED,
            ENQUEUED_ORDER,
            {},
        )
        for i in range(3)
    ]
    t.write_batch(changes)
    rows = {task.message_id: task for task in Task.objects.filter(message_id__startswith="m-own-")}
    for i in range(3):
        row = rows[f"m-own-{i}"]
        assert (row.actor_name, row.queue_name, row.description) == (
            f"actor-{i}",
            f"queue-{i}",
            f"Row {i}",
        )
        assert (row.app_name, row.model_name, row.language) == (f"app{i}", f"model{i}", f"l{i}")
        assert row.created_at == sent_at + timedelta(seconds=i)
        assert row.user_id == (user.pk if i else None)
    # The columns no message and no change sets hold the model's defaults in every row.
    for name in ("progress", "result", "attempts", "seen", "kind", "position", "retry_message"):
        assert {getattr(row, name) for row in rows.values()} == {
            Task._meta.get_field(name).get_default()
        }


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
        running_order(1),
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
        TERMINAL_ORDER,
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
        retrying_order(1),
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
    assert (merged.status, merged.order) == (Status.DONE, TERMINAL_ORDER)
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


def test_the_workers_changes_share_batches(run_all, user, count_queries, monkeypatch):
    # Batches wait (60 s) for a change someone waits for, or for the test's flush.
    monkeypatch.setattr(conf, "WRITE_MAX_DELAY", 60)
    messages = [actors.noop.send(for_state={"user_pk": user.pk}) for _ in range(6)]
    run_all()
    rows = Task.objects.filter(message_id__in=[m.message_id for m in messages])
    assert {row.status for row in rows} == {Status.DONE} and len(rows) == 6
    # One statement per change would be 6 enqueued + 6 running + 6 done = 18. Each running
    # write has its batch written at once (taking whatever else waits along), and each
    # ack hurries its done change (taking whatever else waits along): never more than
    # one statement per message and state.
    assert len(inserts(count_queries)) <= 6 + 6 + 1, inserts(count_queries)


@pytest.mark.parametrize("how", ["tracked group", "group key in for_state"])
def test_progress_is_written_and_announced_with_the_task_and_its_group(
    broker, worker, run_all, user, how, caplog
):
    import dramatiq

    import taskstate

    heard: list[dict[str, Any]] = []
    got = threading.Event()

    def on_progress(sender: Any, **kwargs: Any) -> None:
        heard.append(kwargs)
        got.set()

    progress_committed.connect(on_progress)
    actors.RELEASE.clear()
    actors.REPORT.clear()
    try:
        if how == "tracked group":
            tracked = taskstate.track_group(
                dramatiq.group([actors.reports_huge_progress.message(10)]),
                for_state={"user_pk": user.pk},
            ).run()
            assert tracked.task is not None
            group_pk: int | None = tracked.task.pk
            message_id = tracked.composition.children[0].message_id
        else:
            # A group is joined by track_group only: the key is not one for_state takes.
            other = make_task(kind="group", status=Status.ENQUEUED, state_order=1, user=user)
            message_id = actors.reports_huge_progress.send(
                10, for_state={"user_pk": user.pk, "group": other.pk}
            ).message_id
            group_pk = None
            assert "unknown keys ['group']" in caplog.text
        wait_for(
            lambda: Task.objects.filter(message_id=message_id, status="running").exists(),
            what="the running row",
        )
        actors.REPORT.set()
        assert got.wait(20), "no progress announced"
        # Announced after its commit: the row says so while the actor still runs.
        task = Task.objects.get(message_id=message_id)
        assert (task.status, task.progress) == (Status.RUNNING, 50)
    finally:
        actors.REPORT.set()
        actors.RELEASE.set()
        progress_committed.disconnect(on_progress)
    run_all()
    bar = heard[0]["bar"]
    assert bar.task_pk == task.pk
    assert heard[0]["group_pk"] == group_pk
    assert heard[0]["user_pk"] == user.pk
    assert (bar.percent, bar.message) == (50, "m" * 10)
    # The page tells this bar from an older one of the same attempt by the row's write.
    assert bar.updated == task.updated_at
    assert Task.objects.get(message_id=message_id).status == Status.DONE


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


def test_a_start_looks_for_cancel_requests_with_one_read_on_the_watch_s_own_connection(
    broker, worker, run_all, user, count_queries, monkeypatch
):
    from django.db import connections

    from taskstate.worker import writer as writer_module
    from taskstate.worker.writer import cancels

    used: list[Any] = []
    real_read = writer_module.cancels_since

    def read(since: Any, connection: Any = None) -> list[str] | None:
        used.append(connection)
        return real_read(since, connection)

    monkeypatch.setattr(writer_module, "cancels_since", read)
    assert cancels.refresh()  # as the writer does with its batches: the start reads anyway
    used.clear()
    count_queries.statements = []
    message = actors.runs_once.send("writer-key", for_state={"user_pk": user.pk})
    run_all()
    # One read of cancel requests, on a connection the watch keeps open (a worker thread's
    # own may be closed after each message); no batch waited for. MySQL and MariaDB read
    # each batch back.
    assert len(used) == 1 and used[0] is not None
    assert used[0] not in connections.all(initialized_only=True)
    if connection.vendor != "mysql":
        assert len(count_queries.starting("SELECT")) == 1
    assert Task.objects.get(message_id=message.message_id).status == Status.DONE


def test_a_cancel_read_sends_one_fixed_text_of_message_ids_and_compiles_no_query(monkeypatch):
    from django.db import connections
    from django.db.models.sql.compiler import SQLCompiler

    from tests.support.factories import ago

    make_task(message_id="m-asked", status=Status.ENQUEUED, cancel_requested_at=ago(5))
    make_task(message_id="m-not-asked", status=Status.ENQUEUED)
    compiled: list[Any] = []
    real_as_sql = SQLCompiler.as_sql

    def as_sql(self: SQLCompiler, *args: Any, **kwargs: Any) -> Any:
        compiled.append(self.query.model)
        return real_as_sql(self, *args, **kwargs)

    sent: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        sent.append(sql)
        return execute(sql, params, many, context)

    own = connections.create_connection(connection.alias)
    own.execute_wrappers.append(record)
    monkeypatch.setattr(SQLCompiler, "as_sql", as_sql)
    try:
        first = t.cancels_since(None, own)
        later = [t.cancels_since(since, own) for since in (ago(1), ago(9))]
    finally:
        monkeypatch.undo()
        own.close()

    assert first == ["m-asked"] and later == [["m-asked"], ["m-asked"]]
    assert compiled == []  # no query built by the ORM
    # The reads themselves (a backend may send session settings around them, as the
    # statement bounds do on MySQL): the same text, whatever the time.
    reads = [sql for sql in sent if "cancel_requested_at" in sql]
    assert len(reads) == 3 and reads[1] == reads[2]


def test_each_start_looks_once_and_the_writer_keeps_what_running_messages_know_fresh(
    broker, worker, run_all, user, monkeypatch, cancel_reads
):
    from taskstate.worker.writer import cancels

    monkeypatch.setattr(conf, "CANCEL_CHECK_INTERVAL", 3.0)
    actors.runs_once.send("idle-1", for_state={"user_pk": user.pk})
    run_all()
    assert writer.flush(10)
    assert (cancel_reads.count, cancel_reads.by_workers) == (1, 1)  # the start's look
    # What is known grows older than half the interval: the next batch refreshes it.
    monkeypatch.setattr(cancels, "clock", lambda: time.monotonic() + 1.6)
    assert cancels.age() > 1.5
    assert writer.submit(running("m-fresh"))
    assert writer.flush(10)
    assert (cancel_reads.count, cancel_reads.by_workers) == (2, 1)
    assert cancels.age() < 1.5


def test_flush_writes_what_waits_and_release_lets_go_of_the_connection(monkeypatch):
    monkeypatch.setattr(conf, "WRITE_MAX_DELAY", 60)
    assert writer.submit(running("m-flush"))
    assert writer.unwritten() == 1
    assert not Task.objects.filter(message_id="m-flush").exists()
    assert writer.flush(10)
    assert writer.unwritten() == 0
    assert Task.objects.get(message_id="m-flush").status == Status.RUNNING
    writer.release()


def test_a_queued_change_is_told_the_row_as_written_or_none_when_refused():
    told: list[tuple[Any, bool]] = []

    def queue(change: t.Change) -> None:
        change.notify.append(lambda task, written: told.append((task, written)))
        assert writer.submit(change)
        assert writer.flush(10)

    queue(running("m-told"))
    queue(running("m-told", progress=5))
    t.write_batch([done("m-told")])
    queue(running("m-told"))
    [(first, written_1), (second, written_2), (refused, written_3)] = told
    assert written_1 and (first.message_id, first.status) == ("m-told", Status.RUNNING)
    assert written_2 and second.progress == 5
    assert written_3 and refused is None  # refused: done is final


# --- CancelWatch: what a process knows of cancel requests ------------------------------


def test_the_first_look_finds_every_request_a_worker_may_still_meet(user):
    from datetime import timedelta

    from django.utils import timezone

    from taskstate.worker.writer import cancels

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


def test_the_watch_reads_nothing_while_the_database_is_failing(monkeypatch, cancel_reads):
    from taskstate.worker import writer as writer_module

    monkeypatch.setattr(writer_module, "database_down", lambda: True)
    assert not writer_module.cancels.requested("m-down")
    assert not writer_module.cancels.heard_of("m-down")
    assert cancel_reads.count == 0


# --- the bound: a database that is away -----------------------------------------------


def test_an_outage_fills_the_queue_to_its_bound_then_merges_and_recovery_writes_it_all(
    monkeypatch, caplog
):
    from taskstate.worker import writer as writer_module

    monkeypatch.setattr(writer_module, "MAX_PENDING", 3)
    monkeypatch.setattr(threads, "FIRST_RETRY_PAUSE", 0.05)
    monkeypatch.setattr(threads, "MAX_RETRY_PAUSE", 0.05)
    real_write = writer_module.write_batch
    tries: list[int] = []

    def away(batch: list[t.Change], durable: bool = True) -> list[Any]:
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
    assert writer.unwritten() == 3
    full = [r for r in caplog.records if "further messages are dropped" in r.getMessage()]
    assert len(full) == 1
    # A message already waiting still takes its newest state.
    assert writer.submit(running("m-out-1", progress=40))
    assert writer.submit(done("m-out-2"))
    assert writer.unwritten() == 3

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


def test_an_ack_waits_for_its_final_change_and_hurries_it_past_the_delay(broker, user, monkeypatch):
    """The ack of a finished message follows the commit of its final change, at once:
    not after conf.WRITE_MAX_DELAY (60 s here)."""
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from tests.support.workers import stop_worker

    monkeypatch.setattr(conf, "WRITE_MAX_DELAY", 60)
    w = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    w.start()
    try:
        started = time.monotonic()
        message = actors.runs_once.send("m-stop", for_state={"user_pk": user.pk})
        if isinstance(broker, StubBroker):
            broker.join("default", timeout=30_000, fail_fast=False)
        else:
            broker.join("default", timeout=30_000)
        w.join()  # returns once the message is acked
        assert Task.objects.get(message_id=message.message_id).status == Status.DONE
        assert writer.unwritten() == 0
        assert time.monotonic() - started < 10
    finally:
        stop_worker(broker, w)


class _SeesTheRowAtTheAck(Middleware):
    """Reads each tracked message's row where Dramatiq is about to ack or reject it (a
    middleware after StateMiddleware)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []

    def _look(self, kind: str, message: Any) -> None:
        # A retry's delayed copy is acked when its eta comes (it ran nothing): left out.
        if "for_state" in message.kwargs and "eta" not in message.options:
            status = (
                Task.objects.filter(message_id=message.message_id)
                .values_list("status", flat=True)
                .first()
            )
            self.seen.append((message.actor_name, kind, status))

    def before_ack(self, broker: Any, message: Any) -> None:
        self._look("ack", message)

    def before_nack(self, broker: Any, message: Any) -> None:
        self._look("nack", message)


def test_every_ack_and_rejection_comes_after_the_final_row_is_committed(broker, user, monkeypatch):
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from tests.support.workers import stop_worker

    # A batch would otherwise wait a minute: the ack must not.
    monkeypatch.setattr(conf, "WRITE_MAX_DELAY", 60)
    sees = _SeesTheRowAtTheAck()
    broker.add_middleware(sees)
    w = dramatiq.Worker(broker, worker_timeout=20, worker_threads=4)
    w.start()
    try:
        for_state = {"user_pk": user.pk}
        actors.runs_once.send("m-ack-done", for_state=for_state)
        actors.always_fails.send(for_state=for_state)
        actors.skips.send(for_state=for_state)
        wait_for(lambda: len(sees.seen) >= 5, 30, "five acks and rejections")
        if isinstance(broker, StubBroker):
            broker.join(actors.always_fails.queue_name, fail_fast=False)
        else:
            broker.join(actors.always_fails.queue_name)
        w.join()
    finally:
        stop_worker(broker, w)
        broker.middleware.remove(sees)
    # The row at each ack: the attempt's own final state, or one further on (the next
    # attempt may end before this thread reads); never enqueued or running.
    allowed = {
        ("runs_once", "ack"): {"done"},
        ("always_fails", "ack"): {"retrying", "failed"},
        ("always_fails", "nack"): {"failed"},
        ("skips", "ack"): {"skipped"},
    }
    assert sorted((actor, kind) for actor, kind, _ in sees.seen) == sorted(
        [*allowed, ("always_fails", "ack")]
    )
    wrong = [seen for seen in sees.seen if seen[2] not in allowed[seen[:2]]]
    assert not wrong, sees.seen


def test_a_task_that_ends_while_its_worker_stops_is_written_by_the_stop(broker, user, monkeypatch):
    """Dramatiq sends before_worker_shutdown before it waits for the running actors and
    the consumers' acks: what they hand over is written by after_worker_shutdown."""
    import dramatiq

    from tests.support.workers import stop_worker

    monkeypatch.setattr(conf, "WRITE_MAX_DELAY", 60)
    w = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    w.start()
    try:
        message = actors.paced.send(2, 0.3, for_state={"user_pk": user.pk})
        # Its running change waits in the queue (60 s delay): the actor has started.
        wait_for(lambda: writer.unwritten() == 1, 30, "the actor to start")
    finally:
        stop_worker(broker, w)  # waits for the actor to end, then for its ack
    assert writer.unwritten() == 0
    task = Task.objects.get(message_id=message.message_id)
    assert (task.status, task.result) == (Status.DONE, 2)


def test_shutdown_with_the_database_away_gives_up_within_its_bound_and_says_so(monkeypatch, caplog):
    from taskstate.worker import writer as writer_module

    tries: list[int] = []

    def away(batch: list[t.Change], durable: bool = True) -> list[Any]:
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
    assert any("2 messages' state changes could not be written" in m for m in said), said
    # The changes are still there: written once the database is back.
    monkeypatch.undo()
    assert writer.flush(10)
    assert Task.objects.filter(message_id__startswith="m-away").count() == 2


# --- CancelWatch under faults, async actors and many requests ---------------------------


class CountingLock:
    """A lock that counts the attempts to take it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tries = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.tries += 1
        return self.lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_one_failed_read_serves_every_thread_that_waited_for_it(monkeypatch):
    from taskstate.worker import writer as writer_module

    monkeypatch.setattr(conf, "CANCEL_CHECK_INTERVAL", 0.01)
    gate, calls = threading.Event(), []

    def hung_then_failed(since: Any, connection: Any = None) -> None:
        calls.append(since)
        gate.wait(10)
        return None  # the database could not be read

    monkeypatch.setattr(writer_module, "cancels_since", hung_then_failed)
    monkeypatch.setattr(writer_module, "database_down", lambda: False)
    watch = writer_module.CancelWatch()
    reading = CountingLock()
    watch._reading = reading  # type: ignore[assignment]
    answers: list[bool] = []
    threads = [
        threading.Thread(target=lambda: answers.append(watch.requested("m-hung"))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(calls) == 1, 10, "the first read")
    wait_for(lambda: reading.tries == 4, 10, "the other three waiting for it")
    gate.set()
    for thread in threads:
        thread.join(10)
    assert answers == [False] * 4
    assert len(calls) == 1, "each waiting thread read again"


def test_one_read_begun_after_them_serves_every_start_waiting_and_none_trusts_an_older_one(
    monkeypatch,
):
    from taskstate.worker import writer as writer_module
    from taskstate.worker.writer import cancels

    gates, calls = [threading.Event(), threading.Event()], []

    def read(since: Any, connection: Any = None) -> list[str]:
        calls.append(threading.current_thread().name)
        gates[len(calls) - 1].wait(10)
        # The request commits while the first read is in flight: only the second sees it.
        return [] if len(calls) == 1 else ["m-late"]

    reading = CountingLock()
    monkeypatch.setattr(writer_module, "cancels_since", read)
    monkeypatch.setattr(writer_module, "database_down", lambda: False)
    monkeypatch.setattr(cancels, "_reading", reading)
    answers: dict[str, bool] = {}

    def start(name: str) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: answers.update({name: cancels.heard_of("m-late")}), name=name
        )
        thread.start()
        return thread

    early = start("early")
    wait_for(lambda: len(calls) == 1, 10, "the first read")
    # Three starts arrive while that read is in flight: it began before them, so they wait
    # for the next one, made by one of them, which they share.
    late = [start(f"late-{n}") for n in range(3)]
    wait_for(lambda: reading.tries == 4, 10, "the starts to wait")
    gates[0].set()
    early.join(10)
    assert answers == {"early": False}
    wait_for(lambda: len(calls) == 2, 10, "the second read")
    assert all(thread.is_alive() for thread in late)
    gates[1].set()
    for thread in late:
        thread.join(10)
    assert answers == {"early": False, "late-0": True, "late-1": True, "late-2": True}
    assert calls[0] == "early" and calls[1].startswith("late-") and len(calls) == 2


def test_a_hung_read_holds_other_starts_only_within_the_bound_and_later_ones_not_at_all(
    monkeypatch, caplog
):
    from taskstate.worker import writer as writer_module
    from taskstate.worker.writer import cancels

    gate, calls = threading.Event(), []

    def hung(since: Any, connection: Any = None) -> list[str]:
        calls.append(since)
        gate.wait(10)  # a statement the database bounds would end
        return ["m-hung"]

    monkeypatch.setattr(writer_module, "cancels_since", hung)
    monkeypatch.setattr(writer_module, "database_down", lambda: False)
    monkeypatch.setattr(writer_module, "_start_wait", lambda: 0.3)
    first = threading.Thread(target=cancels.heard_of, args=("m-hung",))
    first.start()
    try:
        wait_for(lambda: len(calls) == 1, 10, "the first start's read")
        began = time.monotonic()
        assert not cancels.heard_of("m-hung")  # nothing known: it starts
        assert 0.3 <= time.monotonic() - began < 5
        said = [r.getMessage() for r in caplog.records]
        assert any("no read of cancel requests ended" in m for m in said), said
        began = time.monotonic()
        assert not cancels.heard_of("m-hung")
        assert time.monotonic() - began < 0.2  # no wait while the read is overdue
    finally:
        gate.set()
        first.join(10)
    assert cancels.heard_of("m-hung")  # the read ended: known
    assert len(calls) == 1


def test_a_start_in_an_event_loop_thread_waits_for_a_read_made_elsewhere(monkeypatch):
    import asyncio

    from taskstate.worker import writer as writer_module
    from taskstate.worker.writer import cancels

    readers: list[int] = []

    def read(since: Any, connection: Any = None) -> list[str]:
        readers.append(threading.get_ident())
        return ["m-loop"]

    monkeypatch.setattr(writer_module, "cancels_since", read)
    monkeypatch.setattr(writer_module, "database_down", lambda: False)

    async def look() -> tuple[bool, int]:
        return cancels.heard_of("m-loop"), threading.get_ident()

    known, loop_thread = asyncio.run(look())
    assert known
    assert readers and loop_thread not in readers


def test_an_async_actor_s_look_never_reads_in_the_event_loop(monkeypatch):
    import asyncio

    from taskstate.core.background import background
    from taskstate.worker import writer as writer_module

    monkeypatch.setattr(conf, "CANCEL_CHECK_INTERVAL", 0.01)
    readers: list[int] = []

    def read(since: Any, connection: Any = None) -> list[str]:
        readers.append(threading.get_ident())
        return ["m-async"]

    monkeypatch.setattr(writer_module, "cancels_since", read)
    monkeypatch.setattr(writer_module, "database_down", lambda: False)
    watch = writer_module.CancelWatch()

    async def actor_look() -> tuple[bool, int]:
        return watch.requested("m-async"), threading.get_ident()

    known, loop_thread = asyncio.run(actor_look())
    assert not known  # nothing known yet, and no read here
    assert background.flush(10)
    assert readers and loop_thread not in readers
    assert watch.known("m-async")  # read by another thread: the next look sees it


def test_requests_forgotten_at_the_bound_are_read_back_by_the_next_first_look(monkeypatch):
    from taskstate.worker import writer as writer_module

    monkeypatch.setattr(writer_module, "MAX_KNOWN_CANCELS", 4)
    looks: list[Any] = []
    answers = iter([["a", "b", "c"], ["d", "e"], ["a", "b", "c", "d", "e"]])

    def read(since: Any, connection: Any = None) -> list[str]:
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

    monkeypatch.setattr(threads, "FIRST_RETRY_PAUSE", 0.05)
    real_once = t._batch_once
    calls: list[int] = []

    def refused_then_away(alias: str, changes: Any, durable: bool) -> Any:
        calls.append(len(changes))
        if len(calls) == 1:
            raise DatabaseError("a value refused: one by one")  # the whole batch
        if len(calls) == 3:
            raise OperationalError("the database went away")  # the second row alone
        return real_once(alias, changes, durable)

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
        assert writer.unwritten() == 2
        monkeypatch.setattr(t, "_batch_once", real_once)
        assert writer.flush(10)
    finally:
        task_changed.disconnect(receiver)
    assert sorted(announced) == [(f"m-part-{i}", "done") for i in range(3)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_each_background_worker_afresh(monkeypatch):
    """The writer, the courier and the background thread (each an ``OwnThread``): in a
    forked child, none of the parent's work, no thread yet, and a lock of its own."""
    from taskstate.core.background import background
    from taskstate.web.courier import courier

    monkeypatch.setattr(conf, "WRITE_MAX_DELAY", 60)
    assert writer.submit(running("m-parent"))  # held: pending when the child is forked
    owners = (writer, courier, background)
    locks = [owner._cond for owner in owners]

    def fresh() -> bool:
        started = any(owner._thread is not None for owner in owners)
        shared = any(o._cond is lock for o, lock in zip(owners, locks, strict=True))
        return not started and not shared and writer.unwritten() == 0

    assert passes_in_forked_child(fresh)
    assert writer.unwritten() == 1  # the parent's change is still the parent's
    assert writer.flush(10)
