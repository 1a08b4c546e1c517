"""taskstate.testing and its pytest plugin: what a project's own tests use to wait for
every state and to read what a user's page receives."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from django.test import TestCase, TransactionTestCase
from django.urls import reverse
from dramatiq.brokers.stub import StubBroker

import taskstate
from taskstate.core.models import Kind, Status, Task
from taskstate.testing import TaskstateTestMixin, record_events, settle
from taskstate.web.channels import user_channel
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def actors_end() -> Iterator[None]:
    """Actors that count until cancelled end when the test does (torn down before the
    worker fixture that it is requested after)."""
    yield
    actors.TEST_OVER.set()


def _running(key: str, actor: Any, user: Any) -> Any:
    actors.STARTED.setdefault(key, threading.Event())
    message = actor.send(key, for_state={"user_pk": user.pk})
    assert actors.STARTED[key].wait(30)
    return message


# --- the pattern of django_dramatiq's testing guide, plus one call -------------------


#: TASKSTATE_TEST_REPEAT=200: the stress run of docs/reliability.md.
REPEAT = int(os.environ.get("TASKSTATE_TEST_REPEAT", "4"))


@pytest.mark.parametrize("run", range(REPEAT))
def test_a_running_task_cancelled_from_the_owners_view_reads_cancelled_after_join_and_settle(
    run, client, user
):
    """As a user writes it: a StubBroker, an in-process dramatiq.Worker, broker.join() and
    worker.join(); then taskstate.testing.settle() before reading the row."""
    broker = dramatiq.get_broker()
    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_timeout=100)
    worker.start()
    try:
        client.force_login(user)
        message = _running(f"guide-{run}", actors.counts_until_cancelled, user)
        settle()  # the row reads running
        task = Task.objects.get(message_id=message.message_id)
        assert task.status == Status.RUNNING
        client.post(reverse("taskstate:cancel", args=[task.pk]))
        if isinstance(broker, StubBroker):
            broker.join(actors.counts_until_cancelled.queue_name, fail_fast=False)
        else:  # RedisBroker (TASKSTATE_TEST_SERVICES=1)
            broker.join(actors.counts_until_cancelled.queue_name)
        worker.join()
        settle()
        assert Task.objects.get(message_id=message.message_id).status == Status.CANCELLED
    finally:
        actors.TEST_OVER.set()
        worker.stop()
        actors.TEST_OVER.clear()
        broker.middleware[:] = [
            m for m in broker.middleware if getattr(m, "worker", None) is not worker
        ]


# --- the plugin's fixtures --------------------------------------------------------------


def test_a_joined_taskstate_worker_has_written_the_final_row(taskstate_worker, user):
    message = actors.returns.send({"rows": 3}, for_state={"user_pk": user.pk})
    taskstate_worker.drain()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE
    assert task.result == {"rows": 3}
    assert task.finished_at is not None


def test_progress_reported_by_the_actor_is_read_after_drain(taskstate_worker, user):
    message = actors.with_progress.send(4, for_state={"user_pk": user.pk})
    taskstate_worker.drain()
    task = Task.objects.get(message_id=message.message_id)
    assert (task.status, task.progress) == (Status.DONE, 100)


def test_a_failed_task_is_drained_without_raising_and_reads_failed(taskstate_worker, user):
    message = actors.always_fails.send(for_state={"user_pk": user.pk})
    taskstate_worker.drain()  # its retries (10-20 ms back-off) run too
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.FAILED
    assert task.attempts == 3


def test_a_group_row_is_complete_with_its_children_after_drain(taskstate_worker, user):
    batch = dramatiq.group(actors.add_one.message(n) for n in range(5))
    taskstate.track_group(batch, for_state={"user_pk": user.pk, "description": "five"}).run()
    taskstate_worker.drain()
    group = Task.objects.get(kind=Kind.GROUP, user=user)
    assert group.status == Status.DONE
    assert sorted(group.children.values_list("status", flat=True)) == [Status.DONE] * 5


def test_the_events_fixture_records_the_rows_a_users_page_receives(
    taskstate_worker, taskstate_events, user, other_user
):
    mine = taskstate_events(user)
    message = actors.returns.send(1, for_state={"user_pk": user.pk, "description": "Mine"})
    actors.returns.send(2, for_state={"user_pk": other_user.pk, "description": "Theirs"})
    taskstate_worker.drain()
    task = Task.objects.get(message_id=message.message_id)
    assert {event.channel for event in mine.events} == {user_channel(user.pk)}
    assert list(mine.rows()) == [task.pk]
    assert "taskstate-status-done" in mine.rows()[task.pk]
    assert "Theirs" not in "".join(event.data for event in mine.events)


def test_a_dismissed_row_is_recorded_as_removed(taskstate_worker, taskstate_events, client, user):
    log = taskstate_events(user)
    message = actors.returns.send(1, for_state={"user_pk": user.pk})
    taskstate_worker.drain()
    task = Task.objects.get(message_id=message.message_id)
    client.force_login(user)
    client.post(reverse("taskstate:seen", args=[task.pk]))
    assert log.removed() == {task.pk}
    assert log.rows() == {}


def test_recording_ends_with_its_block_and_puts_send_event_back(user):
    import django_eventstream

    original = django_eventstream.send_event
    with record_events(user) as outer, record_events(user.pk) as inner:
        assert django_eventstream.send_event is not original
        django_eventstream.send_event(user_channel(user.pk), "", "<p>hello</p>")
    assert django_eventstream.send_event is original
    assert [e.data for e in outer.events] == [e.data for e in inner.events] == ["<p>hello</p>"]


def test_settle_raises_when_the_writer_cannot_finish(monkeypatch):
    from taskstate.testing import NotSettled
    from taskstate.worker.writer import writer

    monkeypatch.setattr(writer, "flush", lambda timeout: False)
    with pytest.raises(NotSettled, match=r"did not finish within 0\.2 s"):
        settle(0.2)


@pytest.mark.django_db
def test_a_worker_inside_a_test_that_never_commits_is_refused_with_a_clear_error():
    from taskstate.testing import UncommittedTestData, require_committed_data

    with pytest.raises(UncommittedTestData, match="transactional_db"):
        require_committed_data()


def test_a_worker_in_a_test_that_commits_is_allowed():
    from taskstate.testing import require_committed_data

    require_committed_data()


# --- unittest and Django test cases -----------------------------------------------------


class CancelFromTheOwnersViewTests(TaskstateTestMixin, TransactionTestCase):
    """The mixin with TransactionTestCase: the worker's threads see what the test wrote."""

    def tearDown(self) -> None:
        actors.TEST_OVER.set()
        super().tearDown()

    def test_cancel_from_the_owners_view_reads_cancelled_and_the_page_got_the_row(self):
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_user("carol", password="pw")
        self.client.force_login(user)
        with self.record_events(user) as page:
            message = _running("mixin", actors.counts_until_cancelled, user)
            self.settle()
            task = Task.objects.get(message_id=message.message_id)
            self.client.post(reverse("taskstate:cancel", args=[task.pk]))
            self.drain()
        assert Task.objects.get(pk=task.pk).status == Status.CANCELLED
        assert "taskstate-status-cancelled" in page.rows()[task.pk]

    def doCleanups(self) -> Any:
        try:
            return super().doCleanups()
        finally:
            actors.TEST_OVER.clear()


class EnqueuedRowUnderTestCase(TestCase):
    """Under TestCase the test's transaction never commits: the enqueued row, written on
    commit, appears only with captureOnCommitCallbacks(execute=True). No worker here: its
    threads could not see the test's uncommitted rows."""

    def test_the_enqueued_row_is_written_when_the_on_commit_callbacks_run(self):
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_user("dave", password="pw")
        broker = dramatiq.get_broker()
        broker.flush_all()
        with self.captureOnCommitCallbacks(execute=True):
            message = actors.returns.send(1, for_state={"user_pk": user.pk})
        task = Task.objects.get(message_id=message.message_id)
        assert (task.status, task.user_id) == (Status.ENQUEUED, user.pk)
        broker.flush_all()

    def test_without_running_the_callbacks_there_is_no_row_yet(self):
        broker = dramatiq.get_broker()
        broker.flush_all()
        with self.captureOnCommitCallbacks(execute=False) as callbacks:
            message = actors.returns.send(1, for_state={"description": "later"})
        assert not Task.objects.filter(message_id=message.message_id).exists()
        assert len(callbacks) >= 1
        broker.flush_all()


# --- the plugin is inert unless used --------------------------------------------------

_PROBE = """
import sys

def test_probe(request):
    loaded = request.config.pluginmanager.get_plugin("taskstate") is not None
    print("TASKSTATE_PLUGIN", loaded, "django" in sys.modules)
"""


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(_PROBE))
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:django",
            "--rootdir",
            str(tmp_path),
            *args,
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_plugin_loads_without_importing_django_and_no_taskstate_turns_it_off(tmp_path):
    with_plugin = _pytest(tmp_path)
    assert with_plugin.returncode == 0, with_plugin.stdout + with_plugin.stderr
    assert "TASKSTATE_PLUGIN True False" in with_plugin.stdout

    without = _pytest(tmp_path, "-p", "no:taskstate")
    assert without.returncode == 0, without.stdout + without.stderr
    assert "TASKSTATE_PLUGIN False False" in without.stdout

    fixtures = _pytest(tmp_path, "-p", "no:taskstate", "--fixtures")
    assert "taskstate_worker" not in fixtures.stdout
    assert "taskstate_worker" in _pytest(tmp_path, "--fixtures").stdout
