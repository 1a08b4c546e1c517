"""The owner-control policy: who may cancel or retry, and what a broken policy does."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser

from taskstate.core import policy
from taskstate.core.models import Status, Task

pytestmark = pytest.mark.django_db

CALLS: list[tuple[Any, int, str]] = []


def records_and_allows(user: Any, task: Task, action: str) -> bool:
    CALLS.append((user, task.pk, action))
    return True


def raises(user: Any, task: Task, action: str) -> bool:
    raise LookupError("the policy's own lookup failed")


@pytest.fixture
def running(user: Any) -> Task:
    return Task.objects.create(
        message_id="m-policy", actor_name="export", status=Status.RUNNING, user=user
    )


def test_an_anonymous_user_may_not_cancel_even_an_ownerless_task(running):
    running.user = None
    assert not policy.owner_or_staff(AnonymousUser(), running, policy.CANCEL)
    assert not policy.owner_or_staff(None, running, policy.CANCEL)


def test_an_action_that_is_neither_cancel_nor_retry_is_never_possible(running, user):
    assert policy.possible(running, policy.CANCEL)
    assert not policy.possible(running, "delete")
    assert not policy.allowed(user, running, "delete")


def test_a_custom_policy_deciding_for_a_pushed_row_is_given_the_tasks_owner(
    running, user, settings
):
    settings.TASKSTATE = {"CONTROL_POLICY": "tests.test_policy.records_and_allows"}
    CALLS.clear()
    assert policy.allowed(None, running, policy.CANCEL, owner=True)
    assert [(user, running.pk, policy.CANCEL)] == CALLS


def test_a_policy_that_raises_refuses_and_logs_the_path(running, user, settings, caplog):
    settings.TASKSTATE = {"CONTROL_POLICY": "tests.test_policy.raises"}
    with caplog.at_level(logging.ERROR, logger="taskstate"):
        assert not policy.allowed(user, running, policy.CANCEL)
    [record] = [r for r in caplog.records if "CONTROL_POLICY" in r.getMessage()]
    assert "tests.test_policy.raises" in record.getMessage()
    assert record.exc_info and record.exc_info[0] is LookupError
