"""StateMiddleware through a real Dramatiq worker (StubBroker, or Redis in CI)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from django.db import transaction

from taskstate.core import conf
from taskstate.core.models import Status, Task
from taskstate.core.signals import task_changed
from taskstate.worker.middleware import StateMiddleware
from tests.conftest import lifecycle_announced, without_the_senders
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)


def announced(statuses: list[tuple[str, str]]) -> list[str]:
    """The statuses announced, without the sender's "enqueued" (``without_the_senders``)."""
    return without_the_senders([status for _, status in statuses])


@pytest.fixture
def statuses() -> Iterator[list[tuple[str, str]]]:
    """Every (message id, status) announced by task_changed, in order."""
    seen: list[tuple[str, str]] = []

    def receiver(sender: Any, task: Task, **kwargs: Any) -> None:
        assert sender is StateMiddleware
        seen.append((task.message_id, task.status))

    task_changed.connect(receiver)
    yield seen
    task_changed.disconnect(receiver)


def test_tracked_lifecycle_ends_done_with_result_and_times(run_all, user, statuses):
    message = actors.returns.send(
        {"rows": 3}, for_state={"user_pk": user.pk, "description": "Export"}
    )
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE
    assert task.user == user
    assert task.description == "Export"
    assert task.actor_name == "returns"
    assert task.result == {"rows": 3}
    assert task.progress == 100
    assert task.attempts == 1
    assert task.started_at is not None and task.finished_at is not None
    assert task.created_at <= task.started_at <= task.finished_at
    # The background writer may merge "running" into "done" (one batch, one row).
    assert lifecycle_announced(announced(statuses), ["running", "done"])


def test_untracked_message_makes_no_queries(run_all, count_queries):
    actors.untracked_noop.send()
    actors.noop.send()  # no for_state at all
    run_all()
    assert count_queries.statements == []
    assert Task.objects.count() == 0


def test_tracked_lifecycle_costs_one_statement_for_the_sender_and_one_batch(
    run_all, user, count_queries
):
    count_queries.statements = []
    actors.noop.send(for_state={"user_pk": user.pk, "description": "cheap"})
    run_all()
    # enqueued: one upsert; running and done: one batch, as they come within
    # conf.WRITE_MAX_DELAY of each other (a no-op actor: always here); and one read of
    # cancel requests for the start (CancelWatch). Nothing else (no transaction
    # statements), whatever thread ran it. MySQL and MariaDB cannot return the row from
    # an upsert: there each write is followed by one read.
    from django.db import connection

    writes, reads = 2, 1
    per_write = 2 if connection.vendor == "mysql" else 1
    assert len(count_queries.statements) == writes * per_write + reads, count_queries.statements
    assert len(count_queries.starting("INSERT")) == writes


def test_progress_is_throttled_and_final_value_written(
    run_all, user, count_queries, settings, monkeypatch
):
    settings.TASKSTATE = {**settings.TASKSTATE, "PROGRESS_INTERVAL": 60}
    # The background writer's batches wait for the ack's hurry (or the test's flush).
    monkeypatch.setattr(conf, "WRITE_MAX_DELAY", 60)
    message = actors.with_progress.send(500, for_state={"user_pk": user.pk})
    run_all()
    updates = count_queries.starting("UPDATE")
    inserts = count_queries.starting("INSERT")
    # The first report is queued and merged with the running and final changes; the 499
    # after it fall inside the interval and only the last one travels with the final
    # status: the sender's row, then one batch.
    assert updates == [], updates
    assert len(inserts) == 2, inserts
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE
    assert task.progress == 100
    assert task.progress_message == "step 500"


def test_retried_failure_reads_retrying_until_last_attempt(run_all, user, statuses):
    message = actors.always_fails.send(for_state={"user_pk": user.pk})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.FAILED
    assert task.attempts == 3
    assert task.error_type == "ValueError"
    assert task.error_message == "broken on purpose"
    assert "broken on purpose" in task.traceback
    # running -> retrying -> running -> retrying -> running -> failed. A "retrying" is
    # refused (never announced) when the next attempt's "running" landed first, as it may
    # under load with a 10 ms back-off: the status never moves backwards.
    # A batch may also merge an attempt's running with what follows it (announced once).
    seen = announced(statuses)
    expected = ["running", "retrying", "running", "retrying", "running", "failed"]
    assert lifecycle_announced(seen, expected), seen


def test_retry_that_succeeds_ends_done_without_error(run_all, user, statuses):
    # The actor fails once per key.
    message = actors.fails_once.send("retry-ok", for_state={"user_pk": user.pk})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE
    assert task.attempts == 2
    assert task.error_type == "" and task.traceback == ""
    assert task.result == "ok"
    # As above, a "retrying" may be refused by a quicker next "running"; the background
    # writer may also write it with that "running" (merged in one batch, announced once).
    seen = announced(statuses)
    assert lifecycle_announced(seen, ["running", "retrying", "running", "done"]), seen


def test_exception_listed_in_throws_fails_at_once(run_all, user):
    message = actors.throws_expected.send(for_state={"user_pk": user.pk})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.FAILED
    assert task.attempts == 1
    assert task.error_type == "KeyError"


def test_skipped_message_reads_skipped(run_all, user):
    message = actors.skips.send(for_state={"user_pk": user.pk})
    run_all()
    assert Task.objects.get(message_id=message.message_id).status == Status.SKIPPED


def test_delayed_message_reads_delayed_then_runs(broker, user):
    message = actors.noop.send_with_options(
        kwargs={"for_state": {"user_pk": user.pk}}, delay=60_000
    )
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DELAYED
    assert task.queue_name == "default"


def test_result_that_is_not_json_is_dropped_with_a_warning(run_all, user, caplog):
    caplog.set_level(logging.WARNING, logger="taskstate")
    message = actors.returns_object.send(for_state={"user_pk": user.pk})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE
    assert task.result is None
    assert "not JSON-serialisable" in caplog.text


def test_result_over_the_size_cap_is_not_stored(run_all, user, settings, caplog):
    settings.TASKSTATE = {**settings.TASKSTATE, "RESULT_MAX_BYTES": 100}
    message = actors.returns.send("x" * 500, for_state={"user_pk": user.pk})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE
    assert task.result is None
    assert "over RESULT_MAX_BYTES" in caplog.text


def test_results_can_be_turned_off(run_all, user, settings):
    settings.TASKSTATE = {**settings.TASKSTATE, "STORE_RESULT": False}
    message = actors.returns.send(42, for_state={"user_pk": user.pk})
    run_all()
    assert Task.objects.get(message_id=message.message_id).result is None


def test_send_inside_a_transaction_writes_after_commit_and_queries_nothing_inside(
    broker, user, count_queries
):
    with transaction.atomic():
        message = actors.noop.send(for_state={"user_pk": user.pk})
        assert count_queries.matching("taskstate_task") == []
    assert Task.objects.get(message_id=message.message_id).status == Status.ENQUEUED


def test_sends_inside_one_transaction_are_written_as_one_statement_at_commit(
    broker, user, count_queries, statuses
):
    with transaction.atomic():
        messages = [actors.noop.send(for_state={"user_pk": user.pk}) for _ in range(100)]
        assert count_queries.matching("taskstate_task") == []
    assert len(count_queries.starting("INSERT")) == 1, count_queries.statements
    sent = {m.message_id for m in messages}
    rows = Task.objects.filter(message_id__in=sent)
    assert set(rows.values_list("status", flat=True)) == {Status.ENQUEUED}
    assert rows.count() == 100
    # Each row is announced (its owner's open page gets it live).
    assert {message_id for message_id, _ in statuses} == sent


def test_a_send_outside_a_transaction_is_written_at_once_by_the_batch_upsert(
    broker, user, count_queries
):
    one = actors.noop.send(for_state={"user_pk": user.pk})
    assert Task.objects.get(message_id=one.message_id).status == Status.ENQUEUED
    with transaction.atomic():
        actors.noop.send(for_state={"user_pk": user.pk})
        actors.noop.send(for_state={"user_pk": user.pk})
    actors.noop.send(for_state={"user_pk": user.pk})
    single, double, single_again = count_queries.starting("INSERT")
    # One upsert for a row and for a batch; a single row as VALUES (on PostgreSQL half the
    # planning of the arrays a batch takes), the same text at every send.
    assert single == single_again
    assert "VALUES (" in single
    assert single[single.index(" ON ") :] == double[double.index(" ON ") :]


def test_sends_in_a_rolled_back_savepoint_or_transaction_write_nothing(broker, user):
    def send(description: str) -> str:
        return actors.noop.send(for_state={"user_pk": user.pk, "description": description})

    with pytest.raises(RuntimeError), transaction.atomic():
        send("rolled back")
        raise RuntimeError("view failed after send")
    with transaction.atomic():
        send("kept")
        with pytest.raises(RuntimeError), transaction.atomic():
            send("savepoint rolled back")
            raise RuntimeError("inner block failed")
        send("kept after the savepoint")
    with transaction.atomic():
        send("next transaction")
    assert sorted(Task.objects.values_list("description", flat=True)) == [
        "kept",
        "kept after the savepoint",
        "next transaction",
    ]


def test_rolled_back_sender_still_gets_a_row_when_the_worker_runs(broker, user):
    with pytest.raises(RuntimeError), transaction.atomic():
        message = actors.noop.send(for_state={"user_pk": user.pk, "description": "orphan"})
        raise RuntimeError("view failed after send")
    # The broker has the message (Dramatiq does not roll back); no row was written.
    assert not Task.objects.filter(message_id=message.message_id).exists()
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    worker.start()
    try:
        broker.join("default", timeout=30_000)
        worker.join()
    finally:
        worker.stop()
        broker.middleware[:] = [
            m for m in broker.middleware if getattr(m, "worker", None) is not worker
        ]
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE
    assert task.description == "orphan"


def test_eight_threads_never_mix_up_messages(run_all, django_user_model):
    users = [django_user_model.objects.create_user(f"u{i}") for i in range(3)]
    sent = {}
    for i in range(240):
        if i % 3 == 0:
            actors.untracked_noop.send()
            continue
        owner = users[i % len(users)]
        message = actors.labelled.send(for_state={"user_pk": owner.pk, "description": f"job-{i}"})
        sent[message.message_id] = (owner.pk, f"job-{i}")
    run_all()
    tasks = {t.message_id: t for t in Task.objects.all()}
    assert set(tasks) == set(sent)
    for message_id, (owner_pk, label) in sent.items():
        task = tasks[message_id]
        assert task.status == Status.DONE, (label, task.status)
        assert (task.user_id, task.description, task.result) == (owner_pk, label, label)
        assert task.progress_message == label


@pytest.mark.parametrize(
    "state_first", [True, False], ids=["state-before-retries", "state-after-retries"]
)
def test_recorded_states_do_not_depend_on_middleware_order(state_first, django_user_model):
    import dramatiq
    from dramatiq.brokers.stub import StubBroker
    from dramatiq.middleware import Retries

    user = django_user_model.objects.create_user("order")
    from django_dramatiq.middleware import DbConnectionsMiddleware

    middleware = [StateMiddleware(), Retries(min_backoff=10, max_backoff=20)]
    if not state_first:
        middleware.reverse()
    broker = StubBroker(middleware=[*middleware, DbConnectionsMiddleware()])
    broker.emit_after("process_boot")

    calls = {"n": 0}

    def flaky(for_state=None):
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError(f"attempt {calls['n']}")

    def doomed(for_state=None):
        raise RuntimeError("never works")

    flaky_actor = dramatiq.actor(flaky, broker=broker, max_retries=5)
    doomed_actor = dramatiq.actor(doomed, broker=broker, max_retries=1)
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    worker.start()
    try:
        ok = flaky_actor.send(for_state={"user_pk": user.pk})
        bad = doomed_actor.send(for_state={"user_pk": user.pk})
        broker.join("default", fail_fast=False)
        worker.join()
    finally:
        worker.stop()
    ok_task = Task.objects.get(message_id=ok.message_id)
    bad_task = Task.objects.get(message_id=bad.message_id)
    assert (ok_task.status, ok_task.attempts) == (Status.DONE, 3)
    assert (bad_task.status, bad_task.attempts) == (Status.FAILED, 2)
    assert bad_task.error_message == "never works"


@pytest.mark.parametrize("fail", [False, True], ids=["done", "failed"])
def test_nul_characters_anywhere_still_leave_a_right_row(run_all, user, fail):
    message = actors.nul_everywhere.send(
        fail, for_state={"user_pk": user.pk, "description": "nul\x00here"}
    )
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == (Status.FAILED if fail else Status.DONE)
    assert task.description == "nulhere"
    if fail:
        assert task.error_message == "badbyte"
    else:
        assert task.result == {"text": "withnul", "kept": "\\u0000 is text here"}


def test_the_same_message_delivered_twice_gives_one_row_that_never_goes_back(
    broker, run_all, user, statuses
):
    message = actors.labelled.message(for_state={"user_pk": user.pk, "description": "twice"})
    broker.enqueue(message)
    broker.enqueue(message)  # a broker redelivering: same message id
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert Task.objects.count() == 1
    assert task.status == Status.DONE
    assert task.result == "twice"
    seen = [status for _, status in statuses]
    assert seen.count("done") == 1
    rank = {"enqueued": 0, "running": 1, "done": 2}
    # The writer announces in commit order: nothing is announced after "done", and
    # nothing before it goes backwards.
    assert seen[-1] == "done"
    assert [rank[s] for s in seen] == sorted(rank[s] for s in seen)


def test_an_untracked_message_that_skips_gets_no_row(run_all):
    message = actors.skips.send()
    run_all()
    assert not Task.objects.filter(message_id=message.message_id).exists()


def test_a_delay_beyond_any_date_leaves_due_at_empty_and_the_send_succeeds(broker, user):
    message = actors.noop.send_with_options(
        kwargs={"for_state": {"user_pk": user.pk}}, delay=10**18
    )
    task = Task.objects.get(message_id=message.message_id)
    assert (task.status, task.due_at) == (Status.DELAYED, None)


def test_a_traceback_is_cut_to_its_last_characters(run_all, user, monkeypatch):
    monkeypatch.setattr(conf, "TRACEBACK_MAX_CHARS", 60)
    message = actors.always_fails.send(for_state={"user_pk": user.pk})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.FAILED and task.error_type
    assert len(task.traceback) == 60
    assert task.traceback.rstrip().endswith("ValueError: broken on purpose")


def test_an_exception_that_breaks_the_traceback_module_ends_failed_not_retrying(
    run_all, user, monkeypatch
):
    """Before Python 3.13 formatting such an exception raises: Dramatiq's Retries cannot
    record its traceback, so it neither retries nor fails the message, which is acked.
    The row must not read "retrying" for a retry that was never sent."""
    import sys
    import threading

    died: list[str] = []
    # Python < 3.13: logging the error kills the Dramatiq worker thread that logs it
    # (logging's handleError prints the chained exception again). Not one of ours.
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.thread.name))
    message = actors.raises_with_broken_notes.send(for_state={"user_pk": user.pk})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.FAILED
    assert task.error_type == "tests.testapp.tasks.BrokenNotes"
    assert task.traceback == "<unprintable traceback>" or "BrokenNotes" in task.traceback
    assert not [name for name in died if name.startswith("taskstate")]
    if sys.version_info >= (3, 13):
        assert died == []


def test_a_send_with_no_owner_and_no_retry_reads_no_table_in_its_insert(broker, count_queries):
    # MySQL refuses a subquery on the table an INSERT writes (error 1093): a link with no
    # key is a plain NULL, and the user table is not read either.
    from django.db import connection

    actors.noop.send(for_state={"description": "nobody's"})
    (insert,) = count_queries.starting("INSERT")
    if connection.vendor != "postgresql":  # its arrays join the links in one statement text
        assert "SELECT" not in _carried_insert(insert).upper(), insert


def _carried_insert(sql: str) -> str:
    return sql[sql.upper().index("INSERT") :]
