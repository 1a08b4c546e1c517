"""The background state writer (taskstate.writer) as a unit, on the test database.

Changes are handed over as the worker's hooks hand them; a long WRITE_MAX_DELAY keeps
them waiting until the test flushes, so what one batch holds is decided by the test.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone

from taskstate import transitions as t
from taskstate import writer as writer_module
from taskstate.for_state import Origin, TaskIdentity
from taskstate.middleware import StateMiddleware
from taskstate.models import Status, Task
from taskstate.signals import progress_committed, task_changed, task_committed
from taskstate.writer import writer
from tests.conftest import _carried

pytestmark = pytest.mark.django_db(transaction=True)

KEEP = ("started_at",)


@pytest.fixture(autouse=True)
def held(settings: Any) -> None:
    """Batches wait for the test's flush (or for WRITE_BATCH_SIZE changes)."""
    settings.TASKSTATE = {**settings.TASKSTATE, "WRITE_MAX_DELAY": 3600}


@pytest.fixture
def announced() -> Iterator[list[tuple[str, str, str]]]:
    """(signal, message id, status) of everything announced, in order, and whether the
    row announced was committed when it was announced."""
    seen: list[tuple[str, str, str]] = []

    def changed(sender: Any, task: Task, **kwargs: Any) -> None:
        assert sender is StateMiddleware
        seen.append(("changed", task.message_id, task.status))

    def committed(sender: Any, task: Task, **kwargs: Any) -> None:
        # Announced after the commit: another connection reads the row as announced.
        on_disk = Task.objects.get(message_id=task.message_id)
        assert (on_disk.status, on_disk.state_order) == (task.status, task.state_order)
        seen.append(("committed", task.message_id, task.status))

    def progressed(sender: Any, *, task_pk: int, percent: int, **kwargs: Any) -> None:
        seen.append(("progress", str(task_pk), str(percent)))

    task_changed.connect(changed)
    task_committed.connect(committed)
    progress_committed.connect(progressed)
    yield seen
    task_changed.disconnect(changed)
    task_committed.disconnect(committed)
    progress_committed.disconnect(progressed)


def origin(message_id: str, user_pk: Any = None) -> Origin:
    identity = TaskIdentity(
        user_pk=user_pk, description=f"job {message_id}", app_name="", model_name=""
    )
    return Origin(message_id, "export", "default", timezone.now(), identity)


def running(message_id: str, attempt: int = 1, started: Any = None) -> t.Change:
    values = {
        "attempts": attempt,
        "started_at": started or timezone.now(),
        "finished_at": None,
        "due_at": None,
        "progress": 0,
        "progress_message": "",
    }
    return t.Change(origin(message_id), Status.RUNNING, t.running_order(attempt), values, KEEP)


def done(message_id: str, attempt: int = 1, started: Any = None, **extra: Any) -> t.Change:
    values = {
        "result": extra.pop("result", 1),
        "finished_at": timezone.now(),
        "progress": 100,
        "progress_message": "",
        "error_type": "",
        "error_message": "",
        "traceback": "",
        "attempts": attempt,
        "started_at": started or timezone.now(),
        **extra,
    }
    return t.Change(origin(message_id), Status.DONE, t.TERMINAL_ORDER, values, KEEP)


def retrying(message_id: str, attempt: int = 1, started: Any = None) -> t.Change:
    values = {
        "error_type": "ValueError",
        "error_message": f"attempt {attempt} broke",
        "traceback": "Traceback ...",
        "progress": 40,
        "progress_message": "half",
        "attempts": attempt,
        "started_at": started or timezone.now(),
        "due_at": None,
    }
    return t.Change(origin(message_id), Status.RETRYING, t.retrying_order(attempt), values, KEEP)


def progress(message_id: str, percent: int, attempt: int = 1, started: Any = None) -> t.Change:
    values = {
        "attempts": attempt,
        "started_at": started or timezone.now(),
        "progress": percent,
        "progress_message": f"{percent} %",
    }
    return t.Change(
        origin(message_id),
        Status.RUNNING,
        t.running_order(attempt),
        values,
        KEEP,
        progress_only=True,
    )


def test_changes_of_many_messages_share_one_statement(count_queries, announced):
    started = timezone.now()
    for i in range(20):
        writer.submit(running(f"m{i}", started=started))
    assert Task.objects.count() == 0  # nothing written on the submitting thread
    assert writer.flush(10)
    assert Task.objects.filter(status=Status.RUNNING).count() == 20
    inserts = count_queries.starting("INSERT")
    # One statement, its own transaction: no BEGIN, no COMMIT, nothing else written
    # (the SELECTs are the test's own, and MySQL's and MariaDB's one read back; SET is
    # MySQL's set-up of the writer's connection when it opens it).
    assert len(inserts) == 1
    others = [s for s in count_queries.statements if not _carried(s).startswith(("SELECT", "SET"))]
    assert others == inserts
    assert [m for kind, m, _ in announced if kind == "changed"] == [f"m{i}" for i in range(20)]


def test_running_and_final_change_of_one_message_become_one_row(count_queries, announced):
    started = timezone.now()
    writer.submit(running("quick", started=started))
    writer.submit(progress("quick", 50, started=started))
    writer.submit(done("quick", started=timezone.now(), result={"ok": True}))
    assert writer.flush(10)
    task = Task.objects.get(message_id="quick")
    assert task.status == Status.DONE
    assert task.started_at == started  # the first start is kept
    assert task.result == {"ok": True} and task.progress == 100 and task.attempts == 1
    assert len(count_queries.starting("INSERT")) == 1
    # Announced once, as what was committed: the running row never was.
    assert announced == [("changed", "quick", "done"), ("committed", "quick", "done")]


def test_a_change_that_would_go_backwards_is_merged_away():
    started = timezone.now()
    writer.submit(done("late", started=started))
    writer.submit(running("late", started=started))  # a late running hook
    assert writer.flush(10)
    assert Task.objects.get(message_id="late").status == Status.DONE
    # And across batches, the statement's guard refuses it.
    writer.submit(running("late", started=started))
    assert writer.flush(10)
    assert Task.objects.get(message_id="late").status == Status.DONE


def test_announcements_follow_the_commits_in_the_order_of_the_changes(announced):
    writer.submit(running("a"))
    writer.submit(running("b"))
    assert writer.flush(10)
    writer.submit(done("b"))
    writer.submit(retrying("a"))
    writer.submit(running("c"))
    assert writer.flush(10)
    changed = [(m, s) for kind, m, s in announced if kind == "changed"]
    assert changed == [
        ("a", "running"),
        ("b", "running"),
        ("b", "done"),
        ("a", "retrying"),
        ("c", "running"),
    ]
    # Each row's task_committed comes right after its task_changed.
    kinds = [kind for kind, _, _ in announced]
    assert kinds == ["changed", "committed"] * 5


def test_a_retry_merged_into_the_next_attempt_keeps_its_error_on_the_row():
    started = timezone.now()
    writer.submit(running("flaky", 1, started))
    assert writer.flush(10)
    writer.submit(retrying("flaky", 1, started))
    writer.submit(running("flaky", 2, timezone.now()))
    assert writer.flush(10)
    task = Task.objects.get(message_id="flaky")
    assert (task.status, task.attempts) == (Status.RUNNING, 2)
    assert task.error_message == "attempt 1 broke"  # as two writes in turn would leave it
    assert task.started_at == started
    # A running change alone keeps the error the row has.
    writer.submit(progress("flaky", 10, attempt=2))
    assert writer.flush(10)
    task.refresh_from_db()
    assert task.progress == 10 and task.error_message == "attempt 1 broke"
    writer.submit(done("flaky", 2))
    assert writer.flush(10)
    task.refresh_from_db()
    assert task.status == Status.DONE and task.error_message == "" and task.error_type == ""


def test_progress_alone_is_announced_as_a_bar_not_a_status_change(announced):
    writer.submit(running("bar"))
    assert writer.flush(10)
    announced.clear()
    writer.submit(progress("bar", 30))
    writer.submit(progress("bar", 60))
    assert writer.flush(10)
    pk = Task.objects.get(message_id="bar").pk
    assert announced == [("progress", str(pk), "60")]
    assert Task.objects.get(message_id="bar").progress_message == "60 %"


def test_a_value_the_database_refuses_costs_its_own_row_only(count_queries, caplog):
    circular: list[Any] = []
    circular.append(circular)
    writer.submit(done("fine-1"))
    writer.submit(done("bad", result=circular))
    writer.submit(done("fine-2"))
    with caplog.at_level(logging.WARNING, logger="taskstate"):
        assert writer.flush(10)
    rows = {task.message_id: task for task in Task.objects.all()}
    assert {m: r.status for m, r in rows.items()} == {
        "fine-1": Status.DONE,
        "bad": Status.DONE,
        "fine-2": Status.DONE,
    }
    assert rows["bad"].result is None and rows["fine-1"].result == 1
    assert "could not be written as done with its values" in caplog.text
    assert "cannot write task state" not in caplog.text


def test_a_full_queue_merges_changes_of_waiting_messages_and_drops_new_ones(
    monkeypatch, caplog, announced
):
    monkeypatch.setattr(writer_module, "MAX_PENDING", 3)
    started = timezone.now()
    with caplog.at_level(logging.ERROR, logger="taskstate"):
        for name in ("x", "y", "z"):
            writer.submit(running(name, started=started))
        dropped = writer.dropped
        writer.submit(running("new-1"))
        writer.submit(running("new-2"))
        for name in ("x", "y", "z"):
            writer.submit(progress(name, 50, started=started))
            writer.submit(done(name, started=started))  # merged: newest state kept
        assert writer.pending() == 3
        assert writer.flush(10)
    assert writer.dropped - dropped == 2
    assert caplog.text.count("state changes are waiting to be written") == 1
    assert {t.message_id: t.status for t in Task.objects.all()} == {
        "x": Status.DONE,
        "y": Status.DONE,
        "z": Status.DONE,
    }


def test_worker_shutdown_writes_what_is_pending(broker):
    writer.submit(running("at-shutdown"))
    writer.submit(done("at-shutdown"))
    assert writer.pending() == 1
    StateMiddleware().before_worker_shutdown(broker, None)  # type: ignore[arg-type]
    assert writer.pending() == 0
    assert Task.objects.get(message_id="at-shutdown").status == Status.DONE


def test_batch_size_bounds_a_statement(count_queries, settings):
    settings.TASKSTATE = {**settings.TASKSTATE, "WRITE_BATCH_SIZE": 4}
    for i in range(10):
        writer.submit(running(f"s{i}"))
    assert writer.flush(10)
    assert Task.objects.count() == 10
    assert len(count_queries.starting("INSERT")) == 3  # 4 + 4 + 2


def test_a_forked_child_starts_with_an_empty_queue():
    writer.submit(running("parent's"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: reports what it inherited, then leaves at once
        os.close(read)
        os.write(write, f"{writer.pending()} {writer._thread is None}".encode())
        os._exit(0)
    os.close(write)
    try:
        report = os.read(read, 100).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert report == "0 True"
    assert writer.pending() == 1  # the parent's change stays the parent's to write
    assert writer.flush(10)
    assert Task.objects.filter(message_id="parent's").exists()
