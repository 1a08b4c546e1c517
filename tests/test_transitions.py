"""The state machine on its own: guarded writes, in any order, without a broker."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest

from taskstate.core import transitions as t
from taskstate.core.for_state import Origin, TaskIdentity
from taskstate.core.models import Status, Task
from taskstate.core.states import (
    DELAYED_ORDER,
    ENQUEUED_ORDER,
    TERMINAL_ORDER,
    retrying_order,
    running_order,
)
from taskstate.core.values import MAX_DEPTH
from tests.support.writes import progress_one, write_one

pytestmark = pytest.mark.django_db


def origin(message_id: str = "m-1", user_pk=None, description: str = "Export") -> Origin:
    return Origin(
        message_id=message_id,
        actor_name="export",
        queue_name="default",
        sent_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        identity=TaskIdentity(user_pk=user_pk, description=description, app_name="", model_name=""),
    )


# Each step: (status, order, values)
STEPS = {
    "enqueued": (Status.ENQUEUED, ENQUEUED_ORDER, {}),
    "running": (Status.RUNNING, running_order(1), {"attempts": 1}),
    "done": (Status.DONE, TERMINAL_ORDER, {"progress": 100, "attempts": 1}),
}


def apply(name: str, o: Origin | None = None) -> Task | None:
    status, order, values = STEPS[name]
    return write_one(o or origin(), status, order, values)


@pytest.mark.parametrize("order", list(itertools.permutations(["enqueued", "running", "done"])))
def test_any_hook_order_ends_done_in_one_row(order):
    for name in order:
        apply(name)
    task = Task.objects.get()
    assert task.status == Status.DONE
    assert task.progress == 100
    assert task.attempts == 1


def test_late_enqueue_never_overwrites_running():
    apply("running")
    assert apply("enqueued") is None
    assert Task.objects.get().status == Status.RUNNING


def test_running_after_done_is_refused():
    apply("done")
    assert apply("running") is None
    assert Task.objects.get().status == Status.DONE


def test_terminal_state_is_final_even_for_another_terminal_write():
    apply("done")
    assert write_one(origin(), Status.FAILED, TERMINAL_ORDER, {}) is None
    assert Task.objects.get().status == Status.DONE


def test_redelivered_attempt_may_run_again_but_keeps_first_start():
    first = write_one(
        origin(),
        Status.RUNNING,
        running_order(1),
        {"attempts": 1, "started_at": datetime(2029, 1, 1, tzinfo=timezone.utc)},
        keep=("started_at",),
    )
    assert first is not None
    again = write_one(
        origin(),
        Status.RUNNING,
        running_order(1),
        {"attempts": 1, "started_at": datetime(2030, 1, 1, tzinfo=timezone.utc)},
        keep=("started_at",),
    )
    assert again is not None
    assert again.started_at == first.started_at


def test_retrying_sits_between_two_attempts():
    write_one(origin(), Status.RUNNING, running_order(1), {"attempts": 1})
    write_one(origin(), Status.RETRYING, retrying_order(1), {"error_type": "ValueError"})
    # A stale "running" of attempt 1 (a duplicate delivery) cannot undo the retry...
    assert write_one(origin(), Status.RUNNING, running_order(1), {"attempts": 1}) is None
    # ...but attempt 2 starts.
    task = write_one(origin(), Status.RUNNING, running_order(2), {"attempts": 2})
    assert task is not None and task.status == Status.RUNNING and task.attempts == 2
    assert task.error_type == "ValueError"


def test_write_returns_the_row_with_identity_from_the_message(django_user_model):
    user = django_user_model.objects.create_user("carol")
    task = apply("enqueued", origin(user_pk=user.pk, description="Invoice run"))
    assert task is not None
    assert task.pk is not None
    assert task.user_id == user.pk
    assert task.description == "Invoice run"
    assert task.created_at == datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_unknown_user_pk_gives_a_row_without_user():
    task = apply("enqueued", origin(user_pk=987_654))
    assert task is not None
    assert task.user_id is None
    assert Task.objects.get().user_id is None


def test_identity_is_written_once_and_never_changed_by_later_writes():
    apply("enqueued", origin(description="first"))
    apply("running", origin(description="second"))
    assert Task.objects.get().description == "first"


def test_a_failed_write_is_logged_and_returns_none(caplog, monkeypatch):
    from django.db import DatabaseError

    def broken(*args, **kwargs):
        raise DatabaseError("server closed the connection")

    monkeypatch.setattr(t, "_batch_once", broken)
    assert apply("enqueued") is None
    assert apply("running") is None
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    # One error per outage, not one per message.
    assert len(errors) == 1
    assert "cannot write task state" in errors[0].getMessage()
    monkeypatch.undo()
    assert apply("enqueued", origin("m-2")) is not None
    assert "answers again" in caplog.text


def test_a_progress_report_lands_only_on_the_running_attempt():
    write_one(origin(), Status.RUNNING, running_order(2), {"attempts": 2})
    assert progress_one(origin(), 1, 50, "old attempt") is None
    assert progress_one(origin(), 2, 60, "now") is not None
    task = Task.objects.get()
    assert (task.progress, task.progress_message) == (60, "now")
    apply("done")
    assert progress_one(origin(), 2, 70) is None


def test_every_column_a_message_gives_its_row_varies_between_rows_of_a_batch():
    # A column left out is written from the batch's first row for all of them (PostgreSQL).
    from_origin = t._row(origin(), {}, {})
    assert set(from_origin) == t._ORIGIN_COLUMNS


def _deep(depth: int) -> object:
    value: object = "bottom"
    for _ in range(depth):
        value = {"next": value}
    return value


# What workers bring, as the middleware hands it over (text raw, results through json_value).
HOSTILE_VALUES = [
    {"progress_message": "lone \ud800 surrogate", "error_message": "NUL \x00 inside"},
    {"result": {"text": "\udfff half, a\x00b", "line": "\u2028\U0001f600", "n": -0.0}},
    {"result": _deep(MAX_DEPTH), "traceback": "x" * 200_000},  # the deepest stored
    {"result": [1.5, None, True, "é", {"": []}], "description": "<b>&\"'</b>"},
    {
        "finished_at": datetime(
            2026, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))
        )
    },
    {"result": "a plain string", "progress_message": ""},
]


def test_a_batch_stores_hostile_values_exactly_as_rows_written_one_by_one(caplog, count_queries):
    from django.db import connection

    from taskstate.core.values import json_value

    def change(message_id: str, values: dict[str, object]) -> t.Change:
        # Every change sets the same columns: one shape, one statement for the batch.
        values = {
            "result": None,
            "progress_message": "done",
            "error_message": "",
            "traceback": "",
            "finished_at": datetime(2026, 1, 2, tzinfo=timezone.utc),
            **values,
        }
        description = values.pop("description", "Export")
        values["result"] = json_value(values["result"])
        return t.Change(
            origin(message_id, description=str(description)),
            Status.DONE,
            TERMINAL_ORDER,
            {"attempts": 1, "progress": 100, **values},
        )

    count_queries.statements = []
    batch = t.write_batch([change(f"m-batch-{i}", v) for i, v in enumerate(HOSTILE_VALUES)])
    # Written as one statement: none refused, none sent again one by one.
    assert all(task is not None for task in batch)
    assert "writing them one by one" not in caplog.text
    assert len(count_queries.starting("INSERT")) == 1, count_queries.statements
    if connection.vendor == "postgresql":
        assert "jsonb_array_elements" in count_queries.starting("INSERT")[0]
    for i, values in enumerate(HOSTILE_VALUES):
        (alone,) = t.write_batch([change(f"m-alone-{i}", values)])
        assert alone is not None
    different = {"id", "message_id", "updated_at"}
    for i in range(len(HOSTILE_VALUES)):
        together = Task.objects.get(message_id=f"m-batch-{i}")
        alone_row = Task.objects.get(message_id=f"m-alone-{i}")
        for field in Task._meta.concrete_fields:
            if field.attname not in different:
                assert getattr(together, field.attname) == getattr(alone_row, field.attname), (
                    i,
                    field.attname,
                )
        # And as read back by the write: what task_changed carries is what is stored.
        returned = batch[i]
        assert returned.result == together.result and returned.traceback == together.traceback
    # No value is SQL NULL in one and JSON null in the other.
    without = sum(1 for values in HOSTILE_VALUES if "result" not in values)
    rows = Task.objects.filter(result__isnull=True)
    assert rows.filter(message_id__startswith="m-batch").count() == without
    assert rows.filter(message_id__startswith="m-alone").count() == without


def _sent_origin(message_id: str, user_pk: object, description: str, **identity: str) -> Origin:
    return Origin(
        message_id=message_id,
        actor_name="export \ud800\x00" + "a" * 300,
        queue_name="default",
        sent_at=datetime(2026, 1, 1, 8, 30, 0, 123456, tzinfo=timezone.utc),
        identity=TaskIdentity(
            user_pk=user_pk, description=description, app_name="", model_name="", **identity
        ),
        language="pt-br\x00" + "x" * 40,
    )


def _stored_as_returned(returned: Task | None) -> None:
    assert returned is not None
    stored = Task.objects.get(message_id=returned.message_id)
    for field in Task._meta.concrete_fields:
        assert getattr(returned, field.attname) == getattr(stored, field.attname), field.attname


# A sender writes outside any transaction (its own, bounded): as here.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("together", [1, 4])
def test_a_senders_row_as_returned_is_the_row_as_stored(django_user_model, together, count_queries):
    from django.db import connection

    user = django_user_model.objects.create_user("dora")
    retried = write_one(origin("m-old"), Status.FAILED, TERMINAL_ORDER, {})
    assert retried is not None
    origins = [
        (_sent_origin("m-new-0", user.pk, "Report \udfff<b>&\x00" + "é" * 300), {}),
        (_sent_origin("m-new-1", 987_654, "no such owner"), {"retry_of_id": 987_654}),
        (
            _sent_origin("m-new-2", None, "", object_type="auth.user", object_pk="\ud800"),
            {"retry_of_id": retried.pk, "retry_message": {"kwargs": {"n": [1, "\u2028"]}}},
        ),
        (_sent_origin("m-new-3", str(user.pk), "owner given as text"), {}),
    ][:together]
    changes = [
        t.Change(o, Status.ENQUEUED, ENQUEUED_ORDER, values, keep=("retry_message",))
        for o, values in origins
    ]
    count_queries.statements = []
    written = t.write_batch(changes, durable=False)
    if connection.vendor != "mysql":  # MySQL reads the rows back
        # One statement wrote and returned every row: none was read back.
        assert not count_queries.starting("SELECT"), count_queries.statements
    for task in written:
        _stored_as_returned(task)


@pytest.mark.django_db(transaction=True)
def test_a_workers_row_as_returned_has_its_times_as_django_reads_them():
    # The worker's rows come back whole from its statement: every time to the microsecond,
    # in the zone Django reads them in.
    o = origin("m-times")
    started = datetime(2026, 1, 1, 8, 30, 0, 123456, tzinfo=timezone.utc)
    write_one(o, Status.RUNNING, running_order(1), {"attempts": 1, "started_at": started})
    finished = started + timedelta(seconds=3, microseconds=7)
    done = write_one(o, Status.DONE, TERMINAL_ORDER, {"attempts": 1, "finished_at": finished})
    _stored_as_returned(done)
    assert done is not None
    stored = Task.objects.get(message_id="m-times")
    assert (done.started_at, done.finished_at) == (started, finished)
    for name in ("created_at", "updated_at", "started_at", "finished_at"):
        value = getattr(done, name)
        assert value.tzinfo is getattr(stored, name).tzinfo is timezone.utc, name


@pytest.mark.django_db(transaction=True)
def test_a_senders_write_that_moves_an_existing_row_on_returns_it_as_stored(count_queries):
    # A row written before the sender's (a scheduled message sent again without delay):
    # what the statement leaves of it is not what was sent.
    due = datetime(2026, 3, 1, tzinfo=timezone.utc)
    o = origin("m-scheduled", description="first")
    assert write_one(o, Status.DELAYED, DELAYED_ORDER, {"due_at": due}) is not None
    Task.objects.filter(message_id="m-scheduled").update(seen=True, progress=7)
    again = origin("m-scheduled", description="second")
    count_queries.statements = []
    (moved,) = t.write_batch([t.Change(again, Status.ENQUEUED, ENQUEUED_ORDER, {})])
    # Read back once at most (within the write's bounds: tests/test_bounds.py).
    assert len(count_queries.starting("SELECT")) <= 1, count_queries.statements
    _stored_as_returned(moved)
    assert moved is not None
    assert (moved.status, moved.due_at, moved.description) == (Status.ENQUEUED, due, "first")
    assert (moved.seen, moved.progress) == (True, 7)
    # The same write again is refused: nothing returned, nothing announced.
    assert t.write_batch([t.Change(again, Status.ENQUEUED, ENQUEUED_ORDER, {})]) == [None]
