"""Async code: send() from an async view, and Dramatiq's ``async def`` actors."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator

import dramatiq
import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware.asyncio import AsyncIO

from taskstate.core import conf, control
from taskstate.core.background import background
from taskstate.core.models import Status, Task
from taskstate.core.signals import progress_committed
from taskstate.worker.writer import writer
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_send_from_an_async_view_writes_the_enqueued_row_without_a_database_call_in_the_loop(
    broker, user, caplog
):
    client = AsyncClient()
    client.force_login(user)
    caplog.set_level(logging.WARNING, logger="taskstate")

    response = async_to_sync(client.get)("/send-async/")

    assert response.status_code == 200
    assert background.flush(10)
    task = Task.objects.get(message_id=response.content.decode())
    assert task.status == Status.ENQUEUED
    assert task.user_id == user.pk
    assert task.description == "from async"
    assert "SynchronousOnlyOperation" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def async_worker(broker: dramatiq.Broker) -> Iterator[dramatiq.Worker]:
    asyncio_middleware = AsyncIO()
    broker.add_middleware(asyncio_middleware)
    worker = dramatiq.Worker(broker, worker_timeout=20, worker_threads=2)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        broker.middleware[:] = [
            m
            for m in broker.middleware
            if m is not asyncio_middleware and getattr(m, "worker", None) is not worker
        ]


def test_async_actor_is_tracked_and_its_progress_reaches_the_row(
    broker, async_worker, user, settings, caplog
):
    settings.TASKSTATE = {**settings.TASKSTATE, "PROGRESS_INTERVAL": 0}
    reported: list[tuple[int, str | None]] = []

    def on_progress(sender, *, bar, **kwargs):
        reported.append((bar.percent, bar.message))

    progress_committed.connect(on_progress)
    try:
        message = tasks.async_steps.send(4, for_state={"user_pk": user.pk, "description": "a"})
        broker.join(tasks.async_steps.queue_name)
        async_worker.join()
        assert background.flush(10)
        assert writer.flush(10)
    finally:
        progress_committed.disconnect(on_progress)

    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE
    assert task.result == 4
    assert task.attempts == 1
    assert (task.progress, task.progress_message) == (100, "async step 4")
    # Progress written while the coroutine ran, not only with the final state. (The
    # background writer may merge the first report into the running row, announced as
    # the row.)
    assert (50, "async step 2") in reported
    assert "SynchronousOnlyOperation" not in caplog.text


@pytest.mark.parametrize(
    ("ask", "ends"), [(False, (Status.CANCELLED, None)), (True, (Status.DONE, "cleaned up"))]
)
def test_async_actor_stops_at_a_cancel_its_refused_report_reveals_without_a_query_in_the_loop(
    broker, async_worker, user, settings, monkeypatch, caplog, ask, ends
):
    # The cancel watch read at the start and stays young for the whole run: only the
    # refusal of a report tells the actor that its row was asked to cancel.
    settings.TASKSTATE = {**settings.TASKSTATE, "PROGRESS_INTERVAL": 0}
    monkeypatch.setattr(conf, "CANCEL_CHECK_INTERVAL", 3600.0)
    caplog.set_level(logging.DEBUG, logger="taskstate")
    key = f"async-cancel-{uuid.uuid4()}"
    message = tasks.async_until_cancelled.send(key, ask, for_state={"user_pk": user.pk})
    try:
        assert tasks.STARTED.setdefault(key, threading.Event()).wait(30)
        assert control.cancel(Task.objects.get(message_id=message.message_id)) is not None
    finally:
        tasks.GO_ON.setdefault(key, threading.Event()).set()
    if isinstance(broker, StubBroker):
        broker.join(tasks.async_until_cancelled.queue_name, timeout=30_000, fail_fast=False)
    else:
        broker.join(tasks.async_until_cancelled.queue_name, timeout=30_000)
    async_worker.join()
    assert background.flush(10)
    assert writer.flush(10)

    task = Task.objects.get(message_id=message.message_id)
    # progress() raises Cancelled; an actor that asks cancel_requested() returns early.
    assert (task.status, task.result) == ends
    assert key not in tasks.FINISHED
    assert "SynchronousOnlyOperation" not in caplog.text
    assert "cannot write task state" not in caplog.text
