"""The cleanup against real ``rundramatiq`` processes, Redis broker, PostgreSQL underneath."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings
from django.urls import reverse

from taskstate.cleanup import cleanup
from taskstate.core import states
from taskstate.core.models import Status, Task
from tests.support.factories import ago
from tests.support.faults import wait_for
from tests.support.processes import start_worker
from tests.testapp import tasks as actors

#: RedisBroker options: a dead worker's unacked messages are taken back after 3 s.
FAST_REQUEUE = json.dumps({"heartbeat_timeout": 3000, "maintenance_chance": 1_000_000})


@pytest.fixture
def owner(client, user):
    client.force_login(user)
    return client


@override_settings(TASKSTATE={"DELETE_SEEN_AFTER": 100})
def test_cancelled_scheduled_task_stays_unrun_across_a_cleanup_and_a_worker_restart(
    process_env: dict[str, str],
    broker: Any,
    own_processes: None,
    owner: Any,
    user: Any,
    tmp_path: Path,
    monkeypatch,
):
    # "Well ahead" made 0.1 s here (the request decides, in this process): the message
    # comes due within the test, after the cleanup and the restart.
    monkeypatch.setattr(states, "CANCEL_AT_ONCE_MARGIN", 0.0)
    trace = tmp_path / "ran"
    # A worker stopped while it holds the scheduled message may leave it unacked: the next
    # worker takes it back once the first one's heartbeat is 3 s old (default 60 s).
    env = {**process_env, "TASKSTATE_TEST_BROKER_OPTIONS": FAST_REQUEUE}
    first = start_worker(env)
    try:
        message = actors.leaves_file.send_with_options(
            args=(str(trace),), kwargs={"for_state": {"user_pk": user.pk}}, delay=8_000
        )
        task = Task.objects.get(message_id=message.message_id)
        owner.post(reverse("taskstate:cancel", args=[task.pk]))
        assert Task.objects.get(pk=task.pk).status == Status.CANCELLED
        owner.post(reverse("taskstate:seen", args=[task.pk]))
        Task.objects.filter(pk=task.pk).update(seen_at=ago(200))  # dismissed long ago

        report = cleanup()
    finally:
        first.stop()  # a deploy: the worker goes, its held messages go back to Redis

    second = start_worker(env)
    try:
        wait_for(
            lambda: trace.exists() or any("was skipped" in line for line in second.lines),
            timeout=40,
            what="the message to come due",
        )
    finally:
        second.stop()
    assert not trace.exists(), "the body of a cancelled task ran"
    assert report.seen_deleted == 0
    assert list(
        Task.objects.filter(message_id=message.message_id).values_list("status", flat=True)
    ) == [Status.CANCELLED]
