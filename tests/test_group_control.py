"""Owner control of a group or pipeline: cancel its unfinished children, retry the failed.

Through a real Dramatiq worker (StubBroker here, Redis in CI) and the real views.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from django.test import Client
from django.urls import reverse

import taskstate
from taskstate.core.models import Kind, Status, Task
from taskstate.worker.writer import writer
from tests.support.drain import flush
from tests.support.faults import wait_for
from tests.support.workers import Sent, stop_worker
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HTTP_HX_REQUEST": "true"}
_keys = itertools.count(1)


def new_key() -> str:
    return f"g{next(_keys)}-{threading.get_ident()}"


@pytest.fixture
def owner(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


@pytest.fixture
def one_thread(broker: dramatiq.Broker) -> Iterator[dramatiq.Worker]:
    """A worker with one thread: a group's messages run one after the other."""
    w = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    w.start()
    yield w
    stop_worker(broker, w)


def join(broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
    from dramatiq.brokers.stub import StubBroker

    if isinstance(broker, StubBroker):
        broker.join("default", timeout=30_000, fail_fast=False)
    else:
        broker.join("default", timeout=30_000)
    worker.join()
    flush()


def children(group: Task) -> list[Task]:
    return list(Task.objects.filter(parent_id=group.pk).order_by("position"))


def wait_started(key: str) -> None:
    actors.STARTED.setdefault(key, threading.Event())
    assert actors.STARTED[key].wait(30), f"{key} never started"


def cancel(client: Client, task: Task, **extra: Any) -> Any:
    return client.post(reverse("taskstate:cancel", args=[task.pk]), **extra)


def retry(client: Client, task: Task, **extra: Any) -> Any:
    return client.post(reverse("taskstate:retry", args=[task.pk]), **extra)


# --- cancel -------------------------------------------------------------------------------


def test_cancel_of_a_group_ends_waiting_children_unrun_stops_the_running_one_keeps_done(
    broker, one_thread, owner, user, count_queries
):
    done_key, running_key = new_key(), new_key()
    waiting_keys = [new_key() for _ in range(3)]
    batch = dramatiq.group(
        [
            # Priorities fix the order one thread takes them in (see tests/testapp/tasks.py).
            actors.runs_once.message(done_key),
            actors.counts_until_cancelled_after.message(running_key),
            *(actors.runs_once_after.message(key) for key in waiting_keys),
        ]
    )
    tracked = taskstate.track_group(batch, for_state={"user_pk": user.pk}).run()
    wait_started(running_key)
    wait_for(lambda: children(tracked.task)[0].status == Status.DONE, what="the first child")
    flush()

    count_queries.statements = []
    response = cancel(owner, tracked.task, **HTMX)

    assert response.status_code == 200
    page = response.content.decode()
    assert f'id="taskstate-task-{tracked.task.pk}"' in page and "Cancelling" in page
    # The parent and every unfinished child in two statements, whatever the group's size.
    updates = count_queries.starting("UPDATE")
    assert len([s for s in updates if "parent_id" in s]) == 1
    rows = children(tracked.task)
    # The queued ones read Cancelling until the worker takes them (it alone knows it
    # will not run them).
    assert [r.status for r in rows] == [
        Status.DONE,
        Status.RUNNING,
        Status.ENQUEUED,
        Status.ENQUEUED,
        Status.ENQUEUED,
    ]
    assert rows[0].cancel_requested_at is None and all(r.is_cancelling for r in rows[1:])
    group = Task.objects.get(pk=tracked.task.pk)
    assert group.is_cancelling and group.status == Status.RUNNING

    join(broker, one_thread)
    rows = children(tracked.task)
    assert [r.status for r in rows] == [Status.DONE] + [Status.CANCELLED] * 4
    assert running_key not in actors.FINISHED  # stopped mid-way
    assert all(actors.RUNS.get(key) is None for key in waiting_keys)
    group = Task.objects.get(pk=tracked.task.pk)
    # Not "done": one child did its work, the others were cancelled.
    assert (group.status, group.children_done) == (Status.CANCELLED, 1)
    assert group.finished_at is not None and not group.is_cancelling
    # Asked once: a second cancel finds nothing to cancel.
    assert cancel(owner, group).status_code == 404


def test_a_group_cancelled_while_a_child_runs_never_starts_its_waiting_children(
    broker, one_thread, owner, user
):
    # One worker thread that keeps running, group after group: each cancel lands while
    # the second child runs, moments after the worker last heard of cancel requests, and
    # the child returns at once after it. The children waiting behind it are taken next
    # and must not start, whichever way they would report.
    for _ in range(5):
        first, second = new_key(), new_key()
        waiting = [new_key(), new_key()]
        batch = dramatiq.group(
            [
                actors.runs_once.message(first),
                actors.ignores_cancel_after.message(second),
                actors.runs_once_after.message(waiting[0]),
                actors.counts_until_cancelled_last.message(waiting[1]),
            ]
        )
        tracked = taskstate.track_group(batch, for_state={"user_pk": user.pk}).run()
        wait_started(second)

        assert cancel(owner, tracked.task).status_code == 302
        actors.LET_FINISH.setdefault(second, threading.Event()).set()
        join(broker, one_thread)
        assert writer.flush(30)

        assert [actors.RUNS.get(key) for key in waiting] == [None, None]
        rows = children(tracked.task)
        # The second child ignored its cancel and returned: its own end stays.
        assert [r.status for r in rows] == [Status.DONE, Status.DONE] + [Status.CANCELLED] * 2
        assert all((r.attempts, r.started_at) == (0, None) for r in rows[2:])


def test_cancel_of_a_group_nothing_started_of_reads_cancelling_until_a_worker_ends_it(
    broker, owner, user
):
    keys = [new_key() for _ in range(4)]
    batch = dramatiq.group(actors.runs_once.message(key) for key in keys)
    tracked = taskstate.track_group(batch, for_state={"user_pk": user.pk}).run()

    response = cancel(owner, tracked.task, **HTMX)

    assert "Cancelling" in response.content.decode()
    group = Task.objects.get(pk=tracked.task.pk)
    assert group.status == Status.ENQUEUED and group.is_cancelling
    assert all(r.is_cancelling for r in children(group))

    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    worker.start()
    try:
        join(broker, worker)
    finally:
        stop_worker(broker, worker)

    assert all(actors.RUNS.get(key) is None for key in keys)
    assert {r.status for r in children(group)} == {Status.CANCELLED}
    group = wait_for(
        lambda: Task.objects.filter(pk=tracked.task.pk, status=Status.CANCELLED).first(),
        what="the group to end cancelled",
    )
    assert (group.children_done, group.progress) == (0, 0)


def test_cancel_of_a_pipeline_mid_way_never_sends_the_later_steps(
    broker, worker, run_all, owner, user, sent
):
    first, second, third = new_key(), new_key(), new_key()
    chain = dramatiq.pipeline(
        [
            actors.counts_until_cancelled.message(first),
            actors.runs_once.message_with_options(args=(second,), pipe_ignore=True),
            actors.runs_once.message_with_options(args=(third,), pipe_ignore=True),
        ]
    )
    tracked = taskstate.track_group(chain, for_state={"user_pk": user.pk}).run()
    wait_started(first)

    cancel(owner, tracked.task)
    run_all()
    flush()

    steps = children(tracked.task)
    assert [s.status for s in steps] == [Status.CANCELLED] * 3
    assert first not in actors.FINISHED
    assert actors.RUNS.get(second) is None and actors.RUNS.get(third) is None
    assert steps[1].message_id not in sent.ids and steps[2].message_id not in sent.ids
    assert Task.objects.get(pk=tracked.task.pk).status == Status.CANCELLED


def test_a_step_that_returns_after_its_cancel_does_not_pipe_on(
    broker, worker, run_all, owner, user, sent, monkeypatch
):
    first, second = new_key(), new_key()
    chain = dramatiq.pipeline(
        [
            actors.checks_cancel.message(first),
            actors.runs_once.message_with_options(args=(second,), pipe_ignore=True),
        ]
    )
    tracked = taskstate.track_group(chain, for_state={"user_pk": user.pk}).run()
    wait_started(first)

    cancel(owner, Task.objects.get(pk=tracked.task.pk))
    run_all()
    flush()

    steps = children(tracked.task)
    # The step's own end landed first; the step after it was never sent.
    assert (steps[0].status, steps[0].result) == (Status.DONE, "cleaned up")
    assert steps[1].message_id not in sent.ids and actors.RUNS.get(second) is None
    _ends_cancelled_once_every_worker_knows(tracked.task, monkeypatch)


def _ends_cancelled_once_every_worker_knows(group: Task, monkeypatch: Any) -> None:
    # The step not sent reads Cancelling (a step that had not seen the request would
    # have sent it) until every worker has heard of the request: then the group's
    # refresh (the cleanup refreshes quiet groups) ends it. The margin made small here.
    from taskstate.core import states
    from taskstate.core.groups import refresh_group

    steps = children(group)
    assert steps[1].status == Status.ENQUEUED and steps[1].is_cancelling
    monkeypatch.setattr(states, "CANCEL_AT_ONCE_MARGIN", -2.0)
    refresh_group(group.pk)
    steps = children(group)
    assert (steps[1].status, steps[1].error_type) == (Status.CANCELLED, "")
    assert Task.objects.get(pk=group.pk).status == Status.CANCELLED


def test_a_running_group_shows_cancel_and_a_failed_one_retry(owner, user, worker, run_all):
    keys = [new_key() for _ in range(2)]
    batch = dramatiq.group(actors.fails_on_first_run.message(key, [1]) for key in keys)
    tracked = taskstate.track_group(batch, for_state={"user_pk": user.pk, "retryable": True})
    page = owner.get(reverse("taskstate:list")).content.decode()
    assert reverse("taskstate:cancel", args=[tracked.task.pk]) in page
    assert reverse("taskstate:retry", args=[tracked.task.pk]) not in page

    tracked.run()
    run_all()
    flush()
    page = owner.get(reverse("taskstate:list")).content.decode()
    assert reverse("taskstate:cancel", args=[tracked.task.pk]) not in page
    assert reverse("taskstate:retry", args=[tracked.task.pk]) in page


# --- retry --------------------------------------------------------------------------------


def test_retry_of_a_group_resends_only_its_failed_children_as_a_new_group(
    worker, run_all, owner, user
):
    failing = [new_key(), new_key()]
    fine = [new_key() for _ in range(3)]
    batch = dramatiq.group(
        [
            actors.runs_once.message(fine[0]),
            actors.fails_on_first_run.message(failing[0], [1, 2]),
            actors.runs_once.message(fine[1]),
            actors.fails_on_first_run.message(failing[1], [3]),
            actors.runs_once.message(fine[2]),
        ]
    )
    for_state = {"user_pk": user.pk, "description": "Import", "retryable": True}
    old = taskstate.track_group(batch, for_state=for_state).run().task
    run_all()
    flush()
    old.refresh_from_db()
    assert (old.status, old.children_failed) == (Status.FAILED, 2)

    response = retry(owner, old, **HTMX)
    assert response.status_code == 200
    run_all()
    flush()

    old.refresh_from_db()
    assert old.seen and all(r.seen for r in children(old))
    new = Task.objects.get(retry_of=old)
    assert (new.kind, new.description, new.user_id) == (Kind.GROUP, "Import", user.pk)
    assert (new.status, new.children_total, new.children_done) == (Status.DONE, 2, 2)
    resent = children(new)
    assert [r.result for r in resent] == [3, 3]
    # Each new child links to the one it retries.
    old_failed = [r.pk for r in children(old) if r.status == Status.FAILED]
    assert [r.retry_of_id for r in resent] == old_failed
    assert all(actors.RUNS[key] == 2 for key in failing)
    assert all(actors.RUNS[key] == 1 for key in fine)
    # A second retry of the same group (another tab) sends nothing.
    assert retry(owner, old).status_code == 404
    assert Task.objects.filter(parent=new).count() == 2


def test_retry_of_a_failed_pipeline_resends_from_the_failed_step_with_the_steps_after_it(
    worker, run_all, owner, user
):
    first, second, third = new_key(), new_key(), new_key()
    chain = dramatiq.pipeline(
        [
            actors.runs_once.message(first, for_state={"description": "Fetch"}),
            actors.fails_on_first_run.message_with_options(
                args=(second, [4]), kwargs={"for_state": {"description": "Check"}}, pipe_ignore=True
            ),
            actors.runs_once.message_with_options(
                args=(third,), kwargs={"for_state": {"description": "Load"}}, pipe_ignore=True
            ),
        ]
    )
    old = taskstate.track_group(chain, for_state={"user_pk": user.pk, "retryable": True}).run()
    run_all()
    flush()
    assert [s.status for s in children(old.task)] == [Status.DONE, Status.FAILED, Status.SKIPPED]

    assert retry(owner, Task.objects.get(pk=old.task.pk)).status_code == 302
    run_all()
    flush()

    new = Task.objects.get(retry_of=old.task)
    assert (new.kind, new.status, new.children_total) == (Kind.PIPELINE, Status.DONE, 2)
    steps = children(new)
    assert [s.description for s in steps] == ["Check", "Load"]
    assert [s.result for s in steps] == [4, third]
    assert [s.retry_of_id for s in steps] == [r.pk for r in children(old.task)[1:]]
    # The step that did its work the first time is not run again.
    assert (actors.RUNS[first], actors.RUNS[second], actors.RUNS[third]) == (1, 2, 1)


def test_a_pipeline_step_is_retried_only_with_its_pipeline_and_no_step_runs_twice(
    worker, run_all, owner, client, other_user, user
):
    first, second, third = new_key(), new_key(), new_key()
    chain = dramatiq.pipeline(
        [
            actors.runs_once.message(first, for_state={"description": "Fetch"}),
            actors.fails_on_first_run.message_with_options(
                args=(second, [4]), kwargs={"for_state": {"description": "Check"}}, pipe_ignore=True
            ),
            actors.runs_once.message_with_options(
                args=(third,), kwargs={"for_state": {"description": "Load"}}, pipe_ignore=True
            ),
        ]
    )
    old = taskstate.track_group(chain, for_state={"user_pk": user.pk, "retryable": True}).run()
    run_all()
    flush()
    _, check, load = children(old.task)
    assert (check.status, load.is_not_run) == (Status.FAILED, True)

    # The failed step on its own: refused, with a reason, and nothing is sent.
    response = retry(owner, check, **HTMX)
    assert response.status_code == 409
    assert "retried with its group" in response.content.decode()
    assert retry(owner, check).status_code == 409  # the plain form alike
    assert cancel(owner, check).status_code == 409
    run_all()
    assert (actors.RUNS[second], actors.RUNS.get(third)) == (1, None)
    assert not Task.objects.filter(retry_of=check).exists()
    assert children(old.task)[2].is_not_run and not children(old.task)[1].seen
    # Someone else's step is no task at all to them.
    other = Client()
    other.force_login(other_user)
    assert retry(other, check).status_code == 404

    # The pipeline's retry is the one new run of the failed work.
    assert retry(owner, Task.objects.get(pk=old.task.pk)).status_code == 302
    run_all()
    flush()
    new = Task.objects.get(retry_of=old.task)
    assert (new.status, [s.description for s in children(new)]) == (Status.DONE, ["Check", "Load"])
    assert (actors.RUNS[first], actors.RUNS[second], actors.RUNS[third]) == (1, 2, 1)


def test_a_failed_child_cannot_be_retried_and_its_group_can(worker, run_all, user):
    from taskstate.core import control
    from taskstate.core.policy import RETRY, possible

    batch = dramatiq.group(actors.fails_on_first_run.message(new_key(), [1]) for _ in range(2))
    old = taskstate.track_group(batch, for_state={"user_pk": user.pk, "retryable": True}).run()
    run_all()
    flush()
    group = Task.objects.get(pk=old.task.pk)
    child = children(group)[0]
    assert child.status == Status.FAILED and child.retry_message is not None
    assert possible(group, RETRY) and not possible(child, RETRY)
    # Called directly, the retry refuses it too, and sends nothing.
    with pytest.raises(control.RetryRefused, match="retried with its group"):
        control.retry(child)
    run_all()
    assert not Task.objects.get(pk=child.pk).seen
    assert not Task.objects.filter(retry_of=child).exists()


def test_a_child_is_cancelled_only_with_its_group(owner, user):
    from taskstate.core.policy import CANCEL, possible

    batch = dramatiq.group(actors.runs_once.message(new_key()) for _ in range(2))
    group = taskstate.track_group(batch, for_state={"user_pk": user.pk}).task
    child = children(group)[0]
    assert possible(group, CANCEL) and not possible(child, CANCEL)
    response = cancel(owner, child, **HTMX)
    assert response.status_code == 409
    assert "cancelled with its group" in response.content.decode()
    assert Task.objects.get(pk=child.pk).cancel_requested_at is None


def test_retry_of_a_group_with_no_retryable_child_is_refused(worker, run_all, owner, user):
    batch = dramatiq.group(actors.fails_on_first_run.message(new_key(), [1]) for _ in range(2))
    old = taskstate.track_group(batch, for_state={"user_pk": user.pk}).run().task
    run_all()
    flush()
    old.refresh_from_db()
    assert old.status == Status.FAILED

    assert retry(owner, old).status_code == 404
    old.refresh_from_db()
    assert not old.seen and not Task.objects.filter(retry_of=old).exists()


# --- who may --------------------------------------------------------------------------------


def test_another_users_cancel_and_retry_of_a_group_are_404(
    client, other_user, user, worker, run_all
):
    running = taskstate.track_group(
        dramatiq.group(actors.runs_once.message(new_key()) for _ in range(2)),
        for_state={"user_pk": user.pk},
    ).task
    failed = taskstate.track_group(
        dramatiq.group(actors.fails_on_first_run.message(new_key(), [1]) for _ in range(2)),
        for_state={"user_pk": user.pk, "retryable": True},
    ).run()
    run_all()
    flush()
    assert Task.objects.get(pk=failed.task.pk).status == Status.FAILED

    client.force_login(other_user)
    assert cancel(client, running).status_code == 404
    assert retry(client, failed.task).status_code == 404
    assert Task.objects.get(pk=running.pk).cancel_requested_at is None
    assert not Task.objects.filter(parent=running, status=Status.CANCELLED).exists()
    assert not Task.objects.get(pk=failed.task.pk).seen
    assert not Task.objects.filter(retry_of=failed.task).exists()


def test_a_step_that_returns_after_its_cancel_does_not_pipe_on_with_state_listed_first(
    user, monkeypatch
):
    # StateMiddleware before Pipelines: Pipelines hears of the step's end first.
    from django_dramatiq.middleware import DbConnectionsMiddleware
    from dramatiq.brokers.stub import StubBroker
    from dramatiq.middleware import Pipelines

    from taskstate.core import control
    from taskstate.worker.middleware import StateMiddleware

    recorder = Sent()
    broker = StubBroker(
        middleware=[StateMiddleware(), Pipelines(), DbConnectionsMiddleware(), recorder]
    )
    broker.emit_after("process_boot")
    started, ran = threading.Event(), []

    def cleans_up(for_state=None):
        import time

        started.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if taskstate.cancel_requested():
                return "cleaned up"
            time.sleep(0.01)
        return "finished"

    def next_step(for_state=None):
        ran.append(True)

    first = dramatiq.actor(cleans_up, broker=broker)
    second = dramatiq.actor(next_step, broker=broker)
    chain = dramatiq.pipeline(
        [first.message(), second.message_with_options(pipe_ignore=True)], broker=broker
    )
    tracked = taskstate.track_group(chain, for_state={"user_pk": user.pk}).run()
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    worker.start()
    try:
        assert started.wait(30)
        assert control.cancel(Task.objects.get(pk=tracked.task.pk)) is not None
        broker.join("default", fail_fast=False, timeout=30_000)
        worker.join()
    finally:
        worker.stop()
    steps = children(tracked.task)
    assert steps[0].status == Status.DONE
    assert steps[1].message_id not in recorder.ids and not ran
    _ends_cancelled_once_every_worker_knows(tracked.task, monkeypatch)
