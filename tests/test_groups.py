"""Groups and pipelines tracked as one row: taskstate.core.grouping, taskstate.core.groups and the
live page's side of them (taskstate.core.group_refresh, publish)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
from django.urls import reverse

import taskstate
from taskstate.core import conf
from taskstate.core import states as t
from taskstate.core.group_refresh import GroupRefresher
from taskstate.core.groups import Refreshed, refresh_group
from taskstate.core.models import Kind, Status, Task
from taskstate.core.states import NOT_RUN_ERROR, WAITING_ORDER
from taskstate.web.channels import user_channel
from tests.support.drain import flush
from tests.support.factories import make_task
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def _group_of(count: int, user_pk: Any = None, broker: Any = None, **for_state: Any) -> Any:
    batch = dramatiq.group((tasks.noop.message() for _ in range(count)), broker=broker)
    return taskstate.track_group(batch, for_state={"user_pk": user_pk, **for_state})


@pytest.fixture
def outbox() -> Any:
    """A broker that only keeps what is sent, whatever broker the tests run on."""
    from dramatiq.brokers.stub import StubBroker

    stub = StubBroker(middleware=[])
    stub.declare_queue("default")
    return stub


# --- recording a group before it runs --------------------------------------------------


def test_track_group_records_a_parent_and_its_waiting_children_before_anything_is_sent(
    outbox: Any, user: Any
) -> None:
    tracked = _group_of(5, user.pk, broker=outbox, description="Import")

    parent = Task.objects.get(pk=tracked.task.pk)
    assert (parent.kind, parent.status, parent.description) == (Kind.GROUP, "enqueued", "Import")
    assert parent.children_total == 5 and parent.user_id == user.pk
    children = list(Task.objects.filter(parent=parent).order_by("position"))
    assert [c.position for c in children] == [1, 2, 3, 4, 5]
    assert all(c.is_waiting and c.user_id == user.pk for c in children)
    # Nothing sent yet, and the messages to send carry the group in their for_state.
    assert outbox.queues["default"].qsize() == 0
    sent_ids = [m.message_id for m in tracked.composition.children]
    assert sent_ids == [c.message_id for c in children]
    for message in tracked.composition.children:
        assert message.kwargs["for_state"] == {
            "user_pk": user.pk,
            "description": "Import",
        }


@pytest.mark.parametrize("size", [3, 700])
def test_track_group_writes_its_children_in_one_statement_whatever_their_number(
    outbox: Any, user: Any, size: int, count_queries: Any
) -> None:
    from django.db import connection

    count_queries.statements = []
    tracked = _group_of(size, user.pk, broker=outbox, description="Import")
    inserts = count_queries.starting("INSERT")
    if connection.vendor == "postgresql":
        # The parent, then every child: arrays of the children's own columns.
        assert len(inserts) == 2, count_queries.statements
    children = list(Task.objects.filter(parent=tracked.task).order_by("position"))
    assert [c.position for c in children] == list(range(1, size + 1))
    assert [c.message_id for c in children] == [m.message_id for m in tracked.composition.children]
    assert [c.description for c in children][-1] == f"noop ({size} of {size})"
    # Every other column as the model's default makes it, alike for every child.
    set_by_the_group = {
        "id",
        "message_id",
        "actor_name",
        "queue_name",
        "description",
        "status",
        "state_order",
        "user_id",
        "parent_id",
        "position",
        "language",
        "created_at",
        "updated_at",
    }
    for field in Task._meta.concrete_fields:
        if field.attname not in set_by_the_group:
            assert {getattr(c, field.attname) for c in children} == {field.get_default()}, field
    first = children[0]
    assert (first.status, first.state_order, first.user_id) == ("enqueued", WAITING_ORDER, user.pk)
    assert first.created_at == first.updated_at == tracked.task.created_at
    assert first.actor_name == "noop" and first.queue_name == "default"


def test_a_message_s_own_for_state_wins_over_the_group_s(broker: dramatiq.Broker) -> None:
    batch = dramatiq.group(
        [tasks.noop.message(for_state={"description": "first"}), tasks.noop.message()]
    )
    tracked = taskstate.track_group(batch, for_state={"description": "both"})
    descriptions = [m.kwargs["for_state"]["description"] for m in tracked.composition.children]
    assert descriptions == ["first", "both"]
    rows = Task.objects.filter(parent=tracked.task).order_by("position")
    assert [r.description for r in rows] == ["first", "noop (2 of 2)"]


def test_track_group_refuses_what_it_cannot_track_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"dramatiq\.group or dramatiq\.pipeline"):
        taskstate.track_group([tasks.noop.message()])  # type: ignore[type-var]
    nested = dramatiq.group([dramatiq.pipeline([tasks.add_one.message(1)])])
    with pytest.raises(TypeError, match="not supported"):
        taskstate.track_group(nested)
    with pytest.raises(ValueError, match="no message"):
        taskstate.track_group(dramatiq.group([]))
    assert not Task.objects.exists()


def test_the_user_s_list_shows_the_group_row_and_not_its_children(user: Any) -> None:
    tracked = _group_of(3, user.pk)
    alone = make_task(user=user)
    shown = list(Task.objects.for_user(user).for_display())
    assert shown == [alone, tracked.task] or set(shown) == {alone, tracked.task}


# --- running it --------------------------------------------------------------------------


def test_a_group_run_by_a_worker_ends_done_with_every_child_counted(
    run_all: Callable[[], None], user: Any
) -> None:
    tracked = _group_of(6, user.pk).run()
    run_all()
    flush()

    parent = Task.objects.get(pk=tracked.task.pk)
    assert parent.status == Status.DONE
    assert (parent.children_total, parent.children_done, parent.children_failed) == (6, 6, 0)
    assert parent.progress == 100 and parent.finished_at is not None
    assert set(Task.objects.filter(parent=parent).values_list("status", flat=True)) == {"done"}


def test_a_pipeline_passes_results_along_and_ends_done(
    run_all: Callable[[], None], user: Any
) -> None:
    chain = dramatiq.pipeline(
        [tasks.add_one.message(1), tasks.add_one.message(), tasks.add_one.message()]
    )
    tracked = taskstate.track_group(chain, for_state={"user_pk": user.pk, "description": "3"})
    tracked.run()
    run_all()
    flush()

    parent = Task.objects.get(pk=tracked.task.pk)
    assert (parent.kind, parent.status, parent.children_done) == (Kind.PIPELINE, "done", 3)
    steps = list(Task.objects.filter(parent=parent).order_by("position"))
    assert [s.result for s in steps] == [2, 3, 4]
    assert steps[0].description == "Step 1 of 3: add_one"


def test_a_failing_middle_step_fails_the_pipeline_naming_it_and_later_steps_read_not_run(
    run_all: Callable[[], None], user: Any
) -> None:
    chain = dramatiq.pipeline(
        [
            tasks.add_one.message(1, for_state={"description": "Fetch"}),
            tasks.step_fails.message(for_state={"description": "Transform"}),
            tasks.add_one.message(for_state={"description": "Publish"}),
        ]
    )
    tracked = taskstate.track_group(chain, for_state={"user_pk": user.pk}).run()
    run_all()
    flush()

    parent = Task.objects.get(pk=tracked.task.pk)
    assert parent.status == Status.FAILED
    assert (parent.children_done, parent.children_failed) == (1, 1)
    assert "Transform" in parent.error_message and "step refused 2" in parent.error_message
    fetch, transform, publish = Task.objects.filter(parent=parent).order_by("position")
    assert (fetch.status, transform.status) == ("done", "failed")
    assert publish.is_not_run and publish.error_type == NOT_RUN_ERROR


# --- the combined state, from the children --------------------------------------------


def _group_with(*children: dict[str, Any], kind: str = "group") -> Task:
    parent = make_task(kind=kind, status=Status.ENQUEUED, state_order=1)
    for position, fields in enumerate(children, start=1):
        make_task(parent=parent, position=position, **fields)
    return parent


def test_a_group_runs_while_any_child_runs_and_names_a_child_failed_for_good(db: None) -> None:
    started = {"started_at": Task._meta.get_field("created_at").get_default()}
    parent = _group_with(
        {"status": "running", "progress": 50, "state_order": 15, **started},
        {"status": "failed", "description": "Item 2", "error_message": "boom", **started},
        {"status": "done", "progress": 100, **started},
        {"status": "enqueued", "state_order": WAITING_ORDER},
    )
    refreshed = refresh_group(parent.pk)
    assert refreshed is not None and refreshed.status_changed
    row = Task.objects.get(pk=parent.pk)
    assert row.status == Status.RUNNING
    assert (row.children_running, row.children_failed, row.children_done) == (1, 1, 1)
    # Each child's progress counts: (50 + 100 + 100 + 0) / 4.
    assert row.progress == 62
    assert row.error_message == "Item 2 failed: boom"

    Task.objects.filter(parent=parent, status__in=("running", "enqueued")).update(
        status="done", progress=100
    )
    refresh_group(parent.pk)
    row = Task.objects.get(pk=parent.pk)
    assert row.status == Status.FAILED and row.children_done == 3
    # Ended: a late refresh (another process's) changes nothing.
    assert refresh_group(parent.pk) is None


@pytest.mark.parametrize("size", [10, 300])
def test_a_refresh_costs_the_same_statements_whatever_the_group_s_size(
    db: None, size: int, count_queries: Any
) -> None:
    parent = _group_with(*({"status": "running", "state_order": 15} for _ in range(size)))
    count_queries.statements = []
    refresh_group(parent.pk)
    # On PostgreSQL, one more sets the refresh's bounds (taskstate.core.bounds).
    own = [s for s in count_queries.statements if not s.startswith("SELECT set_config(")]
    assert len(own) == 3


def test_the_refresher_refreshes_a_busy_group_once_at_once_and_once_after_the_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conf, "GROUP_INTERVAL", 0.3)
    changes = 0
    seen_by_refresh: list[int] = []
    lock = threading.Lock()

    def refresh(pk: int) -> Refreshed | None:
        with lock:
            seen_by_refresh.append(changes)
        return None

    refresher = GroupRefresher(refresh=refresh)
    started = time.monotonic()
    for _ in range(1_000):
        with lock:
            changes += 1
        refresher.changed(7)
    assert refresher.flush(5)
    elapsed = time.monotonic() - started
    # At most one refresh per interval (plus the one at once), and the last one read
    # every change: the group never ends on a stale count.
    assert 1 <= len(seen_by_refresh) <= 2 + int(elapsed / 0.3)
    assert seen_by_refresh[-1] == 1_000


# --- the live page --------------------------------------------------------------------


def test_the_page_gets_the_group_row_and_never_a_child_s(
    run_all: Callable[[], None], user: Any, capture_events: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(conf, "GROUP_INTERVAL", 0.2)
    capture = capture_events(user_channel(user.pk))
    tracked = _group_of(20, user.pk)
    tracked.run()
    run_all()
    events = capture.events()
    child_pks = set(Task.objects.filter(parent=tracked.task).values_list("pk", flat=True))
    assert events, "the group row was never sent"
    for _, _, data in events:
        assert f'id="taskstate-task-{tracked.task.pk}"' in data
        assert not any(f'taskstate-task-{pk}"' in data for pk in child_pks)
        assert "taskstate-progress-" + str(min(child_pks)) not in data
    assert "20 of 20 done" in events[-1][2]
    # Throttled: far fewer events than the 60 child transitions.
    assert len(events) < 20


def test_the_children_partial_lists_steps_in_order_for_the_owner_only(
    client: Any, user: Any, other_user: Any
) -> None:
    parent = _group_with(
        {"status": "done", "description": "Fetch"},
        {"status": "failed", "description": "Transform", "error_message": "bad row"},
        {"status": "skipped", "error_type": NOT_RUN_ERROR, "description": "Publish"},
        kind="pipeline",
    )
    Task.objects.filter(pk=parent.pk).update(user=user)
    Task.objects.filter(parent=parent).update(user=user)
    url = reverse("taskstate:children", args=[parent.pk])

    client.force_login(other_user)
    assert client.get(url, HTTP_HX_REQUEST="true").status_code == 404
    client.force_login(user)
    html = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert html.index("Fetch") < html.index("Transform") < html.index("Publish")
    assert "Not run" in html and "bad row" in html
    assert "<html" not in html
    assert "<html" in client.get(url).content.decode()


def test_the_group_row_says_how_many_are_done_and_can_be_expanded(client: Any, user: Any) -> None:
    tracked = _group_of(4, user.pk, description="Batch")
    Task.objects.filter(pk=tracked.task.pk).update(children_done=1, children_running=2)
    client.force_login(user)
    html = client.get(reverse("taskstate:list"), HTTP_HX_REQUEST="true").content.decode()
    assert "1 of 4 done" in html and "2 running" in html
    assert reverse("taskstate:children", args=[tracked.task.pk]) in html
    assert "noop (1 of 4)" not in html  # the children wait for the row to be opened


# --- dismiss and cleanup ---------------------------------------------------------------


def test_dismissing_a_group_dismisses_its_children(client: Any, user: Any) -> None:
    parent = _group_with({"status": "done"}, {"status": "failed"})
    Task.objects.filter(pk=parent.pk).update(user=user, status="done")
    client.force_login(user)
    response = client.post(reverse("taskstate:seen", args=[parent.pk]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert list(Task.objects.filter(parent=parent).values_list("seen", flat=True)) == [True, True]


def test_cleanup_deletes_a_group_with_its_children_and_never_a_child_alone(db: None) -> None:
    from tests.support.factories import ago

    running = _group_with({"status": "done", "finished_at": ago(10**7)}, {"status": "running"})
    Task.objects.filter(pk=running.pk).update(status="running", state_order=15)
    Task.objects.filter(parent=running, status="enqueued")
    old = _group_with({"status": "done", "finished_at": ago(10**7)})
    Task.objects.filter(pk=old.pk).update(status="done", finished_at=ago(10**7))
    stale_child = make_task(parent=running, status="enqueued", updated_at=ago(10**7))

    Task.objects.all().delete_old(60, only_if_seen=False)
    Task.objects.all().delete_stale(60)

    assert not Task.objects.filter(pk=old.pk).exists()
    assert not Task.objects.filter(parent_id=old.pk).exists()
    assert Task.objects.filter(parent=running).count() == 3
    assert Task.objects.filter(pk=stale_child.pk).exists()
    # No orphans: every child's group is there.
    assert not Task.objects.filter(parent__isnull=False, parent__pk__isnull=True).exists()


def test_cleanup_refreshes_a_group_its_worker_left_behind(db: None) -> None:
    from taskstate.cleanup import cleanup
    from tests.support.factories import ago

    # Its children ended, but the process that would have refreshed it died first.
    parent = _group_with({"status": "done", "progress": 100}, {"status": "done"})
    Task.objects.filter(pk=parent.pk).update(status="running", state_order=15, updated_at=ago(600))
    report = cleanup()
    assert report.groups_refreshed == 1
    row = Task.objects.get(pk=parent.pk)
    assert (row.status, row.children_done) == ("done", 2)


def test_a_group_whose_child_waits_for_a_retry_outlives_the_running_timeout(settings: Any) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from taskstate.cleanup import cleanup
    from tests.support.factories import ago

    settings.TASKSTATE = {"RUNNING_TIMEOUT": 300}
    parent = _group_with(
        {"status": "done", "progress": 100, "started_at": ago(4000), "finished_at": ago(3900)},
        # Its third attempt failed an hour ago; Dramatiq's back-off sends the fourth soon.
        {
            "status": "retrying",
            "attempts": 3,
            "started_at": ago(4000),
            "updated_at": ago(3600),
            "due_at": timezone.now() + timedelta(minutes=5),
            "retry_message": {"actor_name": "noop", "args": [], "kwargs": {}, "options": {}},
        },
    )
    assert refresh_group(parent.pk) is not None
    assert Task.objects.get(pk=parent.pk).status == Status.RUNNING
    # No child moved for longer than RUNNING_TIMEOUT: the group's row has not either.
    Task.objects.filter(pk=parent.pk).update(updated_at=ago(3600))

    report = cleanup()

    assert report.abandoned_failed == 0
    row = Task.objects.get(pk=parent.pk)
    assert (row.status, row.error_type) == (Status.RUNNING, "")
    # The retry succeeds: the group follows it.
    Task.objects.filter(parent=parent, status="retrying").update(
        status="done", progress=100, attempts=4, finished_at=timezone.now()
    )
    assert refresh_group(parent.pk) is not None
    row = Task.objects.get(pk=parent.pk)
    assert (row.status, row.children_done, row.progress) == (Status.DONE, 2, 100)


def test_a_group_whose_running_child_s_worker_died_fails_through_the_child(settings: Any) -> None:
    from taskstate.cleanup import cleanup
    from taskstate.core.group_refresh import group_refresher
    from tests.support.factories import ago

    settings.TASKSTATE = {"RUNNING_TIMEOUT": 300}
    parent = _group_with(
        {"status": "done", "progress": 100, "started_at": ago(4000), "finished_at": ago(3900)},
        {"status": "running", "state_order": 15, "started_at": ago(4000), "updated_at": ago(3600)},
    )
    refresh_group(parent.pk)
    Task.objects.filter(pk=parent.pk).update(updated_at=ago(3600))

    report = cleanup()
    group_refresher.flush(5.0)

    # The child is failed (its worker died), the group follows it from its children:
    # refreshed by the cleanup, or first by the refresher the child's failure woke.
    assert report.abandoned_failed == 1
    child = Task.objects.get(parent=parent, position=2)
    assert (child.status, child.error_type) == (Status.FAILED, "taskstate.WorkerLost")
    row = Task.objects.get(pk=parent.pk)
    assert (row.status, row.children_failed, row.children_done) == (Status.FAILED, 1, 1)


def test_a_group_that_stopped_moving_keeps_its_age_for_the_cleanup(db: None) -> None:
    from tests.support.factories import ago

    parent = _group_with({"status": "enqueued", "state_order": WAITING_ORDER})
    Task.objects.filter(pk=parent.pk).update(children_total=1, updated_at=ago(5000))
    assert refresh_group(parent.pk) is None  # nothing new: nothing written
    assert Task.objects.all().delete_stale(1200) == 2  # never run: gone with its child


def test_run_inside_a_transaction_sends_once_it_commits_and_a_rollback_sends_nothing(
    outbox: Any,
) -> None:
    from django.db import transaction

    with transaction.atomic():
        tracked = _group_of(2, broker=outbox).run()
        assert outbox.queues["default"].qsize() == 0  # workers could not see the rows yet
    assert outbox.queues["default"].qsize() == 2

    outbox.flush_all()

    class Undo(Exception):
        pass

    with pytest.raises(Undo), transaction.atomic():
        _group_of(2, broker=outbox).run()
        raise Undo
    assert outbox.queues["default"].qsize() == 0
    assert list(Task.objects.all()) == [] or Task.objects.filter(parent=tracked.task).count() == 2


def test_a_delayed_group_shows_its_children_scheduled(outbox: Any) -> None:
    tracked = _group_of(3, broker=outbox).run(delay=60_000)
    children = Task.objects.filter(parent=tracked.task)
    assert set(children.values_list("status", flat=True)) == {"delayed"}
    assert all(c.due_at is not None for c in children)
    assert outbox.queues["default.DQ"].qsize() == 3


def test_a_group_whose_rows_cannot_be_written_runs_untracked(outbox: Any, caplog: Any) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE taskstate_task RENAME TO taskstate_task_away")
    try:
        tracked = _group_of(3, broker=outbox, description="while the table is away")
        assert tracked.task is None
        tracked.run()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE taskstate_task_away RENAME TO taskstate_task")
    assert outbox.queues["default"].qsize() == 3
    assert "could not record a group of 3 messages; it runs untracked" in caplog.text
    assert all("for_state" not in m.kwargs for m in tracked.composition.children)


def test_dismiss_finished_takes_each_finished_group_with_its_children_and_no_other(
    client: Any, user: Any, capture_events: Any
) -> None:
    finished = _group_with({"status": "done"}, {"status": "done"})
    running = _group_with({"status": "done"}, {"status": "running", "state_order": 15})
    Task.objects.filter(pk=finished.pk).update(user=user, status="done")
    Task.objects.filter(pk=running.pk).update(user=user, status="running", state_order=15)
    Task.objects.filter(parent__in=(finished, running)).update(user=user)
    capture = capture_events(user_channel(user.pk))
    client.force_login(user)
    client.post(reverse("taskstate:seen-all"), HTTP_HX_REQUEST="true")

    assert set(Task.objects.filter(parent=finished).values_list("seen", flat=True)) == {True}
    assert set(Task.objects.filter(parent=running).values_list("seen", flat=True)) == {False}
    removed = "".join(data for _, _, data in capture.events())
    assert f"#taskstate-task-{finished.pk}" in removed
    # Only the group's row is on the page: its children go with it, unnamed.
    child = Task.objects.filter(parent=finished).first()
    assert child is not None and f'#taskstate-task-{child.pk}"' not in removed


# --- sending a group -------------------------------------------------------------------


@pytest.mark.parametrize("delay", [None, 60_000])
def test_sending_a_group_moves_its_children_on_in_one_statement_and_reads_none_back(
    broker: dramatiq.Broker, user: Any, count_queries: Any, delay: int | None
) -> None:
    from taskstate.core.signals import task_changed

    changed: list[Task] = []

    def receiver(sender: Any, task: Task, **kwargs: Any) -> None:
        changed.append(task)

    tracked = _group_of(50, user.pk, broker=broker)
    task_changed.connect(receiver)
    try:
        count_queries.statements = []
        tracked.run(delay=delay)
        writes = [s for s in count_queries.statements if not s.lstrip().startswith("SELECT")]
    finally:
        task_changed.disconnect(receiver)
    # One statement for every child (inside run()'s own transaction), nothing read back;
    # their status did not change (a waiting child is "enqueued" already): no task_changed.
    moves = [s for s in writes if "taskstate_task" in s]
    assert len(moves) == 1 and "RETURNING" not in moves[0].upper(), writes
    assert changed == []
    children = Task.objects.filter(parent=tracked.task)
    expected = ("delayed", t.DELAYED_ORDER) if delay else ("enqueued", t.ENQUEUED_ORDER)
    assert set(children.values_list("status", "state_order")) == {expected}


def test_a_pipeline_s_send_moves_its_first_step_on_and_leaves_the_others_waiting(
    broker: dramatiq.Broker,
) -> None:
    steps = dramatiq.pipeline([tasks.noop.message(), tasks.noop.message(), tasks.noop.message()])
    tracked = taskstate.track_group(steps).run()
    rows = Task.objects.filter(parent=tracked.task).order_by("position")
    assert [r.state_order for r in rows] == [t.ENQUEUED_ORDER, WAITING_ORDER, WAITING_ORDER]


def test_a_retryable_group_s_children_keep_their_message_for_a_retry_from_the_start(
    broker: dramatiq.Broker, user: Any
) -> None:
    tracked = _group_of(3, user.pk, broker=broker, retryable=True).run()
    children = Task.objects.filter(parent=tracked.task)
    assert all(c.retry_message and c.retry_message["actor_name"] == "noop" for c in children)
    assert {c.state_order for c in children} == {t.ENQUEUED_ORDER}


def test_a_delayed_group_s_children_keep_their_message_for_a_retry(
    broker: dramatiq.Broker, user: Any
) -> None:
    tracked = _group_of(3, user.pk, broker=broker, retryable=True).run(delay=60_000)
    children = Task.objects.filter(parent=tracked.task)
    assert {c.status for c in children} == {"delayed"}
    assert all(c.retry_message and c.retry_message["actor_name"] == "noop" for c in children)


def test_a_group_whose_children_cannot_be_shown_queued_is_sent_all_the_same(
    outbox: Any, caplog: Any
) -> None:
    from django.db import OperationalError, connection

    def refuse_the_move(execute: Any, sql: str, *args: Any) -> Any:
        if re.match(r"UPDATE .taskstate_task. SET .state_order.", sql):
            raise OperationalError("the server went away")
        return execute(sql, *args)

    tracked = _group_of(3, broker=outbox)
    with connection.execute_wrapper(refuse_the_move):
        tracked.run()
    assert outbox.queues["default"].qsize() == 3
    assert "were sent but could not be shown as queued" in caplog.text
    assert set(Task.objects.filter(parent=tracked.task).values_list("state_order", flat=True)) == {
        WAITING_ORDER
    }
