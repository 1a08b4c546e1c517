"""The same, for ``unittest`` and Django's test cases (docs/testing.md)."""

from __future__ import annotations

import dramatiq
from django.contrib.auth import get_user_model
from django.test import TestCase, TransactionTestCase
from django.urls import reverse
from dramatiq.brokers.stub import StubBroker

import taskstate.testing
from demo import tasks
from taskstate.models import Task
from taskstate.testing import TaskstateTestMixin, wait_for_status


class PingWithDramatiqsOwnWorkerTests(TransactionTestCase):
    """django_dramatiq's pattern (StubBroker, a dramatiq.Worker, join), plus settle()."""

    broker: StubBroker

    def setUp(self):
        broker = dramatiq.get_broker()
        assert isinstance(broker, StubBroker)  # demo_site.test_settings
        self.broker = broker
        self.broker.flush_all()
        self.worker = dramatiq.Worker(self.broker, worker_timeout=100)
        self.worker.start()

    def tearDown(self):
        self.worker.stop()

    def test_ping_ends_done(self):
        user = get_user_model().objects.create_user("ada", password="pw")
        message = tasks.quick_ping.send(for_state={"user_pk": user.pk})

        self.broker.join(tasks.quick_ping.queue_name, fail_fast=False)
        self.worker.join()
        taskstate.testing.settle()  # the worker's last states are written

        assert Task.objects.get(message_id=message.message_id).status == "done"


class ReportTests(TaskstateTestMixin, TransactionTestCase):
    """The mixin starts a worker for each test; self.drain() runs what was sent."""

    def test_the_owner_cancels_a_running_report_and_the_page_shows_it(self):
        user = get_user_model().objects.create_user("ada", password="pw")
        self.client.force_login(user)

        with self.record_events(user) as page:
            message = tasks.build_report.send(for_state={"user_pk": user.pk})
            task = wait_for_status(message, "running")
            self.client.post(reverse("taskstate:cancel", args=[task.pk]))
            self.drain()

        task.refresh_from_db()
        assert task.status == "cancelled"
        assert "taskstate-status-cancelled" in page.rows()[task.pk]


class PingButtonTests(TestCase):
    """TestCase: no worker (its threads cannot see the test's uncommitted rows); the
    enqueued row is written once the on-commit callbacks run."""

    def test_the_ping_button_queues_a_task_owned_by_the_user(self):
        user = get_user_model().objects.create_user("ada", password="pw")
        self.client.force_login(user)

        with self.captureOnCommitCallbacks(execute=True):
            self.client.post(reverse("demo:start", args=["ping"]))

        task = Task.objects.get(user=user)
        assert (task.status, task.description) == ("enqueued", "Quick ping")
        dramatiq.get_broker().flush_all()
