"""Projects with ``USE_TZ = False``: naive local times in every column, offsets on the page."""

from __future__ import annotations

import gc
import logging
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from taskstate.core.for_state import Origin, TaskIdentity
from taskstate.core.models import Status, Task
from taskstate.core.states import running_order
from taskstate.web.publish import render_row
from taskstate.web.task_json import task_json
from taskstate.worker.writer import cancels, writer
from tests.support.drain import flush
from tests.support.writes import write_one
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)

BERLIN = ZoneInfo("Europe/Berlin")


def _reconnect() -> None:
    # A project sets USE_TZ once; a test changes it while background threads hold
    # connections. Each connection keeps the time zone it was opened with, and each
    # thread's wrapper the zone it worked out (Django resets the test thread's alone):
    # everything is closed and forgotten, so that every thread opens anew.
    flush(10)  # rows rendered while the settings hold
    writer.release()
    cancels.close()
    connections.close_all()
    for wrapper in gc.get_objects():
        if isinstance(wrapper, BaseDatabaseWrapper):
            for cached in ("timezone", "timezone_name"):
                wrapper.__dict__.pop(cached, None)


@pytest.fixture
def naive_times(settings):
    _reconnect()
    settings.USE_TZ = False
    settings.TIME_ZONE = "Europe/Berlin"
    yield
    _reconnect()


def _near_now(value: datetime | None, ahead: float = 0) -> bool:
    local_now = datetime.now(BERLIN).replace(tzinfo=None)
    return (
        value is not None
        and value.tzinfo is None
        and (abs((value - local_now).total_seconds() - ahead) < 60)
    )


def test_a_tracked_task_is_written_whole_in_local_time(naive_times, run_all, user, caplog):
    caplog.set_level(logging.WARNING, logger="taskstate")
    message = actors.returns.send({"rows": 3}, for_state={"user_pk": user.pk})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE and task.result == {"rows": 3}
    assert _near_now(task.created_at) and _near_now(task.started_at)
    assert _near_now(task.finished_at)
    assert not [r for r in caplog.records if r.name == "taskstate" and r.levelno >= logging.WARNING]
    # The page and the JSON say which zone those times are in.
    finished = timezone.make_aware(task.finished_at, BERLIN).isoformat()
    assert finished.endswith(("+01:00", "+02:00"))
    assert f'datetime="{finished}"' in render_row(task)
    assert task_json(task)["times"]["finished"] == finished
    # Local times may step back (daylight saving time): the bar carries no write time.
    assert "data-taskstate-updated" not in render_row(task)


def test_a_workers_write_returns_naive_local_times(naive_times):
    # The row as the worker's statement returns it, as Django reads it: no zone attached.
    now = timezone.now()
    origin = Origin(
        message_id="m-naive",
        actor_name="noop",
        queue_name="default",
        sent_at=now,
        identity=TaskIdentity(user_pk=None, description="", app_name="", model_name=""),
    )
    written = write_one(origin, Status.RUNNING, running_order(1), {"started_at": now})
    assert written is not None
    assert _near_now(written.updated_at) and _near_now(written.started_at)
    assert _near_now(written.created_at)


def test_a_delayed_message_is_due_in_local_time(naive_times, broker, user):
    message = actors.noop.send_with_options(
        kwargs={"for_state": {"user_pk": user.pk}}, delay=600_000
    )
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DELAYED
    assert _near_now(task.due_at, ahead=600)
    assert task.created_at <= timezone.now() < task.due_at - timedelta(minutes=9)


def test_local_times_are_in_time_zone_whatever_zone_is_active(naive_times, run_all, user):
    # timezone.activate() works without USE_TZ too (a user's zone for display): stored
    # times and offsets still follow TIME_ZONE.
    with timezone.override("America/New_York"):
        message = actors.returns.send({"rows": 1}, for_state={"user_pk": user.pk})
        run_all()
        task = Task.objects.get(message_id=message.message_id)
        assert _near_now(task.created_at) and _near_now(task.finished_at)
        finished = task_json(task)["times"]["finished"]
        assert finished == timezone.make_aware(task.finished_at, BERLIN).isoformat()
