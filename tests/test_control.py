"""Owner control: cancel a queued, delayed, waiting or running task; retry a failed one.

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

from taskstate.core import conf, states
from taskstate.core import transitions as t
from taskstate.core.control import RETRY_OF_OPTION
from taskstate.core.models import Status, Task
from taskstate.core.states import (
    DELAYED_ORDER,
    ENQUEUED_ORDER,
    TERMINAL_ORDER,
    cancelling_order,
    running_order,
)
from taskstate.testing import settle
from taskstate.worker.middleware import StateMiddleware
from taskstate.worker.writer import cancels
from tests.support.faults import wait_for
from tests.support.workers import stop_worker
from tests.support.writes import write_one
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HTTP_HX_REQUEST": "true"}
#: Options on an enqueued message that the sender did not choose: ours (which task a
#: retry retries, the sender's language) and the Redis broker's own id.
OURS_AND_THE_BROKERS = {RETRY_OF_OPTION, "taskstate_language", "redis_message_id"}
_keys = itertools.count(1)


def new_key() -> str:
    return f"k{next(_keys)}-{threading.get_ident()}"


@pytest.fixture
def owner(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


def row(message: Any) -> Task:
    return Task.objects.get(message_id=message.message_id)


def cancel(client: Client, task: Task, **extra: Any) -> Any:
    return client.post(reverse("taskstate:cancel", args=[task.pk]), **extra)


def retry(client: Client, task: Task, **extra: Any) -> Any:
    return client.post(reverse("taskstate:retry", args=[task.pk]), **extra)


def wait_for_row(message: Any, what: str, **fields: Any) -> Task:
    def matches() -> Task | None:
        task = Task.objects.filter(message_id=message.message_id).first()
        if task and all(getattr(task, k) == v for k, v in fields.items()):
            return task
        return None

    return wait_for(matches, timeout=30, what=what)


@pytest.fixture
def stopped_worker(broker: dramatiq.Broker) -> Iterator[list[dramatiq.Worker]]:
    """Workers a test starts itself (after it cancelled something), stopped afterwards."""
    workers: list[dramatiq.Worker] = []
    yield workers
    for w in workers:
        stop_worker(broker, w)


def start_worker(broker: dramatiq.Broker, workers: list[dramatiq.Worker]) -> dramatiq.Worker:
    w = dramatiq.Worker(broker, worker_timeout=20, worker_threads=4)
    w.start()
    workers.append(w)
    return w


def join(broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
    from dramatiq.brokers.stub import StubBroker

    if isinstance(broker, StubBroker):
        broker.join("default", timeout=30_000, fail_fast=False)
    else:
        broker.join("default", timeout=30_000)
    worker.join()
    # The background writer writes the worker's last changes moments later.
    settle(30)


# --- cancel before the actor runs ------------------------------------------------------
#
# A queued task is not ended by the request: the worker that takes its message ends it
# cancelled without running it when it has heard of the request (CancelWatch), or treats
# it as a running task's cancel when the request came too late for it to know
# (docs/owner-control.md). Only a task scheduled comfortably ahead is ended at once.


def test_cancel_before_start_reads_cancelling_then_ends_cancelled_and_the_body_never_runs(
    broker, stopped_worker, owner, user
):
    key = new_key()
    message = actors.runs_once.send(key, for_state={"user_pk": user.pk})
    assert row(message).status == Status.ENQUEUED

    response = cancel(owner, row(message), **HTMX)

    assert response.status_code == 200
    task = row(message)
    assert (task.status, task.state_order) == (Status.ENQUEUED, ENQUEUED_ORDER)
    assert task.is_cancelling and task.finished_at is None
    body = response.content.decode()
    assert f'id="taskstate-task-{task.pk}"' in body and "Cancelling" in body
    assert reverse("taskstate:cancel", args=[task.pk]) not in body

    join(broker, start_worker(broker, stopped_worker))
    assert actors.RUNS.get(key) is None
    task = row(message)
    assert (task.status, task.state_order) == (Status.CANCELLED, TERMINAL_ORDER)  # not skipped
    assert task.finished_at is not None and task.error_type == ""
    # It never started: its running change was never queued.
    assert (task.attempts, task.started_at) == (0, None)


def test_cancel_of_a_message_due_soon_reads_cancelling_then_ends_cancelled_unrun(
    broker, stopped_worker, owner, user
):
    key = new_key()
    message = actors.runs_once.send_with_options(
        args=(key,), kwargs={"for_state": {"user_pk": user.pk}}, delay=300
    )
    assert row(message).status == Status.DELAYED

    assert cancel(owner, row(message)).status_code == 302
    task = row(message)
    assert task.status == Status.DELAYED and task.is_cancelling

    join(broker, start_worker(broker, stopped_worker))
    assert actors.RUNS.get(key) is None
    assert row(message).status == Status.CANCELLED


def test_cancel_of_a_message_scheduled_well_ahead_ends_cancelled_at_once_and_it_never_runs(
    broker, stopped_worker, owner, user, settings, monkeypatch
):
    # The margin made small, so that the message comes due within the test.
    monkeypatch.setattr(states, "CANCEL_AT_ONCE_MARGIN", 1.0)
    monkeypatch.setattr(conf, "CANCEL_CHECK_INTERVAL", 0.2)
    key = new_key()
    message = actors.runs_once.send_with_options(
        args=(key,), kwargs={"for_state": {"user_pk": user.pk}}, delay=3_000
    )
    assert cancel(owner, row(message)).status_code == 302
    task = row(message)
    assert (task.status, task.state_order) == (Status.CANCELLED, TERMINAL_ORDER)
    assert task.finished_at is not None

    join(broker, start_worker(broker, stopped_worker))  # about 3 s: it comes due
    assert actors.RUNS.get(key) is None
    assert row(message).status == Status.CANCELLED


def test_cancel_during_a_retry_back_off_ends_cancelled_and_the_retry_never_runs(
    broker, worker, run_all, owner, user
):
    key = new_key()
    message = actors.fails_then_backs_off.send(key, for_state={"user_pk": user.pk})
    task = wait_for_row(message, "the first attempt to fail", status=Status.RETRYING)

    cancel(owner, task)
    task = row(message)
    assert task.status == Status.RETRYING and task.is_cancelling  # due in 2 to 4 s

    run_all()  # the retry comes off the delay queue, and is skipped
    assert actors.RUNS[key] == 1
    task = row(message)
    assert (task.status, task.attempts) == (Status.CANCELLED, 1)


def test_a_worker_start_after_a_cancel_costs_at_most_one_read(
    broker, stopped_worker, owner, user, count_queries, monkeypatch
):
    # The watch's periodic look (every half interval after a batch) stays out of it,
    # however long a loaded machine takes.
    monkeypatch.setattr(conf, "CANCEL_CHECK_INTERVAL", 60.0)
    message = actors.runs_once.send(new_key(), for_state={"user_pk": user.pk})
    cancel(owner, row(message))
    count_queries.statements = []
    join(broker, start_worker(broker, stopped_worker))
    from django.db import connection

    # An idle worker's one look for new requests; no running write, only the end.
    reads, writes = 1, 1
    # (MySQL and MariaDB read the row after each upsert, or the batch's rows.)
    expected = reads + (writes if connection.vendor == "mysql" else 0)
    assert len(count_queries.starting("SELECT")) == expected
    assert len(count_queries.starting("INSERT")) == writes
    assert row(message).status == Status.CANCELLED


def test_a_worker_that_heard_of_the_cancel_with_a_batch_reads_nothing(
    broker, stopped_worker, owner, user, count_queries, cancel_reads
):
    key = new_key()
    message = actors.runs_once.send(key, for_state={"user_pk": user.pk})
    cancel(owner, row(message))
    assert cancels.refresh()  # as the writer thread does with its batches
    cancel_reads.threads.clear()
    count_queries.statements = []
    join(broker, start_worker(broker, stopped_worker))
    from django.db import connection

    assert cancel_reads.by_workers == 0
    assert len(count_queries.starting("SELECT")) == (1 if connection.vendor == "mysql" else 0)
    assert actors.RUNS.get(key) is None and row(message).status == Status.CANCELLED


@pytest.mark.parametrize("actor", ["runs_once", "counts_until_cancelled"])
def test_a_queued_task_cancelled_behind_a_running_one_never_runs_its_body(
    broker, stopped_worker, owner, user, actor
):
    # A worker that is running already (and looked for cancel requests moments ago)
    # takes the queued message as soon as the task ahead of it returns: the owner saw
    # "Cancelling", so the body must not start.
    w = dramatiq.Worker(broker, worker_timeout=20, worker_threads=1)
    w.start()
    stopped_worker.append(w)
    for _ in range(3):
        ahead, key = new_key(), new_key()
        actors.ignores_cancel.send(ahead, for_state={"user_pk": user.pk})
        actors.STARTED.setdefault(ahead, threading.Event())
        assert actors.STARTED[ahead].wait(30)
        message = getattr(actors, actor).send(key, for_state={"user_pk": user.pk})

        response = cancel(owner, row(message), **HTMX)
        assert "Cancelling" in response.content.decode()
        actors.LET_FINISH.setdefault(ahead, threading.Event()).set()
        join(broker, w)

        assert actors.RUNS.get(key) is None
        task = row(message)
        assert (task.status, task.attempts, task.started_at) == (Status.CANCELLED, 0, None)


def test_a_cancel_made_just_after_the_workers_last_looked_still_keeps_the_body_from_starting(
    broker, stopped_worker, owner, user, monkeypatch
):
    # The watch read just before the request, and is young for a long time: a start
    # still knows of every request made before it.
    monkeypatch.setattr(conf, "CANCEL_CHECK_INTERVAL", 60.0)
    key = new_key()
    message = actors.runs_once.send(key, for_state={"user_pk": user.pk})
    assert cancels.refresh()
    cancel(owner, row(message))

    join(broker, start_worker(broker, stopped_worker))

    assert actors.RUNS.get(key) is None
    assert row(message).status == Status.CANCELLED


# --- cancel while running ---------------------------------------------------------------


def start_running(actor: Any, user: Any) -> tuple[str, Any, Task]:
    """Send ``actor`` for ``user`` and wait until its body and its row are running."""
    key = new_key()
    message = actor.send(key, for_state={"user_pk": user.pk})
    actors.STARTED.setdefault(key, threading.Event())
    assert actors.STARTED[key].wait(30)
    return key, message, wait_for_row(message, "the task to run", status=Status.RUNNING)


def test_cancel_while_running_stops_at_the_next_progress_and_is_not_retried(
    worker, run_all, owner, user
):
    key, message, task = start_running(actors.counts_until_cancelled, user)

    response = cancel(owner, task, **HTMX)
    assert "Cancelling" in response.content.decode()
    marked = row(message)
    assert marked.status == Status.RUNNING and marked.is_cancelling
    assert marked.state_order == cancelling_order(1)

    run_all()
    task = row(message)
    assert task.status == Status.CANCELLED
    assert key not in actors.FINISHED  # stopped mid-way
    assert actors.RUNS[key] == 1  # max_retries=3, yet not retried
    assert task.attempts == 1
    assert task.error_type == "" and task.finished_at is not None


def test_cancel_requested_lets_an_actor_that_reports_nothing_stop_on_its_own(
    worker, run_all, owner, user
):
    key, message, task = start_running(actors.checks_cancel, user)
    cancel(owner, task)

    run_all()
    task = row(message)
    # It returned normally after cleaning up: its own end landed first.
    assert (task.status, task.result) == (Status.DONE, "cleaned up")
    assert key not in actors.FINISHED


def test_an_actor_that_never_reports_reads_cancelling_then_ends_as_it_ends(
    worker, run_all, owner, user
):
    # No progress(), no cancel_requested(), no dramatiq-abort: nothing can stop it.
    key, message, task = start_running(actors.ignores_cancel, user)

    assert "Cancelling" in cancel(owner, task, **HTMX).content.decode()
    page = owner.get(reverse("taskstate:list")).content.decode()
    assert "Cancelling" in page and reverse("taskstate:cancel", args=[task.pk]) not in page

    actors.LET_FINISH.setdefault(key, threading.Event()).set()
    run_all()
    task = row(message)
    # Its own end is the first final state: done, with its result; the request stays noted.
    assert (task.status, task.result, task.attempts) == (Status.DONE, "finished", 1)
    assert task.cancel_requested_at is not None and key in actors.FINISHED


@pytest.mark.parametrize(
    "state_first", [True, False], ids=["state-before-retries", "state-after-retries"]
)
def test_a_cancelled_attempt_is_never_retried_whatever_the_middleware_order(
    state_first, django_user_model
):
    from django_dramatiq.middleware import DbConnectionsMiddleware
    from dramatiq.brokers.stub import StubBroker
    from dramatiq.middleware import Retries

    user = django_user_model.objects.create_user("order")
    middleware = [StateMiddleware(), Retries(min_backoff=10, max_backoff=20)]
    if not state_first:
        middleware.reverse()
    broker = StubBroker(middleware=[*middleware, DbConnectionsMiddleware()])
    broker.emit_after("process_boot")
    started = threading.Event()
    runs = {"n": 0}

    def long_one(for_state=None):
        import time

        import taskstate

        runs["n"] += 1
        for step in range(3000):
            taskstate.progress(step % 100)
            started.set()
            time.sleep(0.01)

    def retried_on_anything(retries, exception):
        return True

    actor = dramatiq.actor(long_one, broker=broker, max_retries=5, retry_when=retried_on_anything)
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    worker.start()
    try:
        message = actor.send(for_state={"user_pk": user.pk})
        assert started.wait(30)
        task = wait_for_row(message, "the task to run", status=Status.RUNNING)
        assert t.request_cancel(task.pk)
        broker.join("default", fail_fast=False, timeout=30_000)
        worker.join()
    finally:
        worker.stop()
    task = row(message)
    assert (task.status, task.attempts, runs["n"]) == (Status.CANCELLED, 1, 1)


# --- races: whichever end lands first stays --------------------------------------------


def _origin(message_id: str, user: Any) -> Any:
    from datetime import datetime, timezone

    from taskstate.core.for_state import Origin, TaskIdentity

    return Origin(
        message_id=message_id,
        actor_name="export",
        queue_name="default",
        sent_at=datetime.now(tz=timezone.utc),
        identity=TaskIdentity(user_pk=user.pk, description="", app_name="", model_name=""),
    )


def test_a_cancel_after_done_changes_nothing(user):
    origin = _origin("race-done-first", user)
    write_one(origin, Status.ENQUEUED, ENQUEUED_ORDER, {})
    write_one(origin, Status.DONE, TERMINAL_ORDER, {})
    task = Task.objects.get(message_id=origin.message_id)
    assert not t.request_cancel(task.pk)
    task.refresh_from_db()
    assert (task.status, task.cancel_requested_at) == (Status.DONE, None)


def _scheduled_ahead(origin: Any) -> Task:
    from datetime import timedelta

    from django.utils import timezone

    due = timezone.now() + timedelta(hours=1)
    write_one(origin, Status.DELAYED, DELAYED_ORDER, {"due_at": due})
    return Task.objects.get(message_id=origin.message_id)


def test_done_after_a_cancel_of_a_task_scheduled_ahead_is_refused(user):
    origin = _origin("race-cancel-first", user)
    task = _scheduled_ahead(origin)
    assert t.request_cancel(task.pk)
    assert write_one(origin, Status.DONE, TERMINAL_ORDER, {}) is None
    assert write_one(origin, Status.RUNNING, running_order(1), {}) is None
    task.refresh_from_db()
    assert task.status == Status.CANCELLED


def test_a_queued_task_is_not_ended_by_its_cancel_request(user):
    # Only the worker knows whether its body started: a request leaves the row queued
    # (asked), and what the worker then writes lands.
    origin = _origin("race-queued", user)
    write_one(origin, Status.ENQUEUED, ENQUEUED_ORDER, {})
    task = Task.objects.get(message_id=origin.message_id)
    assert t.request_cancel(task.pk)
    task.refresh_from_db()
    assert (task.status, task.state_order, task.finished_at) == (
        Status.ENQUEUED,
        ENQUEUED_ORDER,
        None,
    )
    assert task.is_cancelling
    written = write_one(origin, Status.RUNNING, running_order(1), {})
    assert written is not None and written.cancel_requested_at is not None
    assert write_one(origin, Status.DONE, TERMINAL_ORDER, {}) is not None


def test_done_after_a_cancel_request_of_a_running_task_lands(user):
    # A running task asked to cancel that finishes first: its own end is the first end.
    origin = _origin("race-running", user)
    write_one(origin, Status.RUNNING, running_order(1), {"attempts": 1})
    task = Task.objects.get(message_id=origin.message_id)
    assert t.request_cancel(task.pk)
    assert not t.request_cancel(task.pk)  # asked once
    assert write_one(origin, Status.DONE, TERMINAL_ORDER, {}) is not None
    task.refresh_from_db()
    assert task.status == Status.DONE


def _race_once(n: int, user: Any) -> None:
    from django.db import close_old_connections

    origin = _origin(f"race-threads-{n}", user)
    pk = _scheduled_ahead(origin).pk
    barrier = threading.Barrier(2)
    outcome: dict[str, Any] = {}

    def cancels() -> None:
        barrier.wait()
        outcome["cancel"] = t.request_cancel(pk)
        close_old_connections()

    def finishes() -> None:
        barrier.wait()
        outcome["done"] = write_one(origin, Status.DONE, TERMINAL_ORDER, {}) is not None
        close_old_connections()

    threads = [threading.Thread(target=cancels), threading.Thread(target=finishes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    task = Task.objects.get(pk=pk)
    assert outcome["cancel"] != outcome["done"], outcome
    assert task.status == (Status.CANCELLED if outcome["cancel"] else Status.DONE)


def test_a_cancel_racing_a_finishing_task_in_threads_ends_in_one_final_state(user):
    for n in range(10):
        _race_once(n, user)


# --- who may ------------------------------------------------------------------------------


def test_another_users_cancel_and_retry_are_404(client, other_user, user):
    from tests.support.factories import make_task

    running = make_task(status=Status.RUNNING, user=user)
    failed = make_task(
        status=Status.FAILED, user=user, retry_message={"actor_name": "runs_once", "args": []}
    )
    client.force_login(other_user)
    assert cancel(client, running).status_code == 404
    assert retry(client, failed).status_code == 404
    running.refresh_from_db()
    failed.refresh_from_db()
    assert running.cancel_requested_at is None and not failed.seen


def test_anonymous_users_are_sent_to_log_in(client, user):
    from tests.support.factories import make_task

    task = make_task(status=Status.RUNNING, user=user)
    assert cancel(client, task).status_code == 302
    task.refresh_from_db()
    assert task.cancel_requested_at is None


def test_cancel_and_retry_need_the_csrf_token(user):
    from tests.support.factories import make_task

    task = make_task(status=Status.RUNNING, user=user)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert cancel(client, task).status_code == 403
    assert retry(client, task).status_code == 403


def test_a_cancel_is_pushed_to_the_owners_pages_at_once(owner, user, capture_events):
    # No worker here: what the owner's other tabs get comes from the view alone.
    from datetime import timedelta

    from django.utils import timezone

    from taskstate.web.channels import user_channel
    from tests.support.factories import make_task

    running = make_task(status=Status.RUNNING, user=user)
    queued = make_task(status=Status.ENQUEUED, user=user)
    later = timezone.now() + timedelta(hours=1)
    scheduled = make_task(status=Status.DELAYED, user=user, due_at=later)
    capture = capture_events(user_channel(user.pk))
    for task in (running, queued, scheduled):
        assert cancel(owner, task).status_code == 302

    pushed = [data for _, _, data in capture.events()]

    def rows_of(task: Task) -> list[str]:
        return [d for d in pushed if f'id="taskstate-task-{task.pk}"' in d]

    for asked in (running, queued):  # a queued one until a worker takes its message
        assert rows_of(asked) and "Cancelling" in rows_of(asked)[-1]
        assert reverse("taskstate:cancel", args=[asked.pk]) not in rows_of(asked)[-1]
    assert rows_of(scheduled) and "taskstate-status-cancelled" in rows_of(scheduled)[-1]


def test_a_completed_task_cannot_be_cancelled(owner, user):
    from tests.support.factories import make_task

    task = make_task(status=Status.DONE, user=user)
    assert cancel(owner, task).status_code == 404


def test_a_policy_that_refuses_hides_the_button_and_the_view_refuses(owner, user, settings):
    from tests.support.factories import make_task

    task = make_task(status=Status.RUNNING, user=user)
    page = owner.get(reverse("taskstate:list"))
    assert reverse("taskstate:cancel", args=[task.pk]) in page.content.decode()

    settings.TASKSTATE = {"CONTROL_POLICY": "tests.test_control.nobody"}
    page = owner.get(reverse("taskstate:list"))
    assert reverse("taskstate:cancel", args=[task.pk]) not in page.content.decode()
    assert cancel(owner, task).status_code == 404


def nobody(user: Any, task: Task, action: str) -> bool:
    return False


# --- retry --------------------------------------------------------------------------------


def test_retry_of_a_non_retryable_task_is_refused(worker, run_all, owner, user):
    message = actors.fails_on_first_run.send(new_key(), [1], for_state={"user_pk": user.pk})
    run_all()
    task = row(message)
    assert task.status == Status.FAILED and task.retry_message is None
    page = owner.get(reverse("taskstate:list")).content.decode()
    assert reverse("taskstate:retry", args=[task.pk]) not in page
    assert retry(owner, task).status_code == 404
    assert Task.objects.count() == 1


def test_retry_sends_the_same_message_again_links_the_rows_and_dismisses_the_old(
    worker, run_all, owner, user, capture_events
):
    key = new_key()
    for_state = {"user_pk": user.pk, "description": "Import", "retryable": True}
    message = actors.fails_on_first_run.send_with_options(
        args=(key, [1, 2, 3]), kwargs={"for_state": for_state}, time_limit=50_000
    )
    run_all()
    old = row(message)
    assert old.status == Status.FAILED
    assert old.retry_message["args"] == [key, [1, 2, 3]]
    assert old.retry_message["options"] == {"time_limit": 50_000}
    page = owner.get(reverse("taskstate:list")).content.decode()
    assert reverse("taskstate:retry", args=[old.pk]) in page

    response = retry(owner, old, **HTMX)
    assert response.status_code == 200
    run_all()

    old.refresh_from_db()
    assert old.seen
    new = Task.objects.get(retry_of=old)
    assert new.message_id != old.message_id
    assert (new.status, new.attempts, new.result) == (Status.DONE, 1, 6)
    assert new.description == "Import" and new.user == user
    assert new.retry_message is not None  # still retryable
    assert actors.RUNS[key] == 2
    # A second retry of the same row (another tab, a double click) sends nothing.
    assert retry(owner, old).status_code == 404
    assert Task.objects.count() == 2


def test_retry_of_a_cancelled_task_runs_it_again(broker, stopped_worker, owner, user):
    key = new_key()
    message = actors.runs_once.send(key, for_state={"user_pk": user.pk, "retryable": True})
    cancel(owner, row(message))
    worker = start_worker(broker, stopped_worker)
    wait_for_row(message, "the worker to end it cancelled", status=Status.CANCELLED)
    assert retry(owner, row(message)).status_code == 302
    join(broker, worker)
    new = Task.objects.get(retry_of=row(message))
    assert new.status == Status.DONE and actors.RUNS[key] == 1


def test_a_retried_message_carries_the_original_actor_arguments_and_options(
    broker, sent, stopped_worker, owner, user
):
    key = new_key()
    for_state = {"user_pk": user.pk, "description": "Import", "retryable": True}
    message = actors.runs_once.send_with_options(
        args=(key,),
        kwargs={"for_state": for_state},
        time_limit=50_000,
        max_retries=7,
        broker_priority=3,
        pipe_ignore=True,
    )
    cancel(owner, row(message))  # cancelled before it ran: retryable
    # The worker that takes the message ends it cancelled, unrun.
    running = start_worker(broker, stopped_worker)
    old = wait_for_row(message, "the worker to end it cancelled", status=Status.CANCELLED)
    join(broker, running)
    assert actors.RUNS.get(key, 0) == 0
    assert retry(owner, old).status_code == 302

    [original, again] = sent.messages
    assert again.message_id != original.message_id
    assert (again.actor_name, again.queue_name, again.args, again.kwargs) == (
        original.actor_name,
        original.queue_name,
        original.args,
        original.kwargs,
    )
    chosen = {"time_limit": 50_000, "max_retries": 7, "broker_priority": 3, "pipe_ignore": True}
    assert chosen.items() <= original.options.items()
    # The sender's options, and only which task it retries added; nothing set in flight
    # (the first message's broker id, a retry count) comes along.
    assert again.options[RETRY_OF_OPTION] == old.pk
    assert {k: v for k, v in again.options.items() if k not in OURS_AND_THE_BROKERS} == chosen
    new = Task.objects.get(retry_of=old)
    assert (new.message_id, new.actor_name, new.queue_name) == (
        again.message_id,
        old.actor_name,
        old.queue_name,
    )
    assert new.description == "Import" and new.user == user


def test_a_message_over_the_cap_is_not_kept_and_not_retryable(worker, run_all, user, settings):
    settings.TASKSTATE = {"RETRY_MESSAGE_MAX_BYTES": 100}
    message = actors.fails_on_first_run.send(
        new_key(), list(range(100)), for_state={"user_pk": user.pk, "retryable": True}
    )
    run_all()
    assert row(message).retry_message is None


def test_cancel_and_retry_work_without_javascript(broker, stopped_worker, owner, user):
    message = actors.runs_once.send(new_key(), for_state={"user_pk": user.pk, "retryable": True})
    response = cancel(owner, row(message), data={"next": "/somewhere/"})
    assert (response.status_code, response["Location"]) == (302, "/somewhere/")
    start_worker(broker, stopped_worker)
    wait_for_row(message, "the worker to end it cancelled", status=Status.CANCELLED)
    response = retry(owner, row(message), data={"next": "/elsewhere/"})
    assert (response.status_code, response["Location"]) == (302, "/elsewhere/")
