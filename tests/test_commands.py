"""The management commands: ``clear_tasks`` and ``taskstate_scheduler``."""

from __future__ import annotations

import io
import itertools
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from taskstate.core.models import Status, Task

pytestmark = pytest.mark.django_db

_ids = itertools.count(1)


def make_tasks(count: int, **fields: Any) -> list[Task]:
    values: dict[str, Any] = {"actor_name": "export", "status": Status.DONE, **fields}
    return [Task.objects.create(message_id=f"cmd-{next(_ids)}", **values) for _ in range(count)]


class _Terminal(io.StringIO):
    """Standard input that says it is a terminal (input() itself is patched)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Pretend stdin is a terminal; returns the prompts input() was called with."""
    monkeypatch.setattr("sys.stdin", _Terminal())
    return []


def answer(monkeypatch: pytest.MonkeyPatch, prompts: list[str], reply: str) -> None:
    def fake_input(prompt: str = "") -> str:
        prompts.append(prompt)
        return reply

    monkeypatch.setattr("builtins.input", fake_input)


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


# --- clear_tasks ------------------------------------------------------------------------


def test_clear_tasks_with_yes_deletes_every_task_and_prints_the_count(user):
    make_tasks(3, user=user)
    make_tasks(2, status=Status.RUNNING)

    output = run("clear_tasks", "--yes")

    assert "Deleted 5 tasks." in output
    assert Task.objects.count() == 0


def test_clear_tasks_refuses_without_yes_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    make_tasks(4)

    with pytest.raises(CommandError, match=r"4 tasks.*--yes"):
        run("clear_tasks")

    assert Task.objects.count() == 4


def test_clear_tasks_refuses_without_yes_when_stdin_is_closed(monkeypatch):
    monkeypatch.setattr("sys.stdin", None)
    make_tasks(1)
    with pytest.raises(CommandError):
        run("clear_tasks")
    assert Task.objects.count() == 1


def test_clear_tasks_deletes_after_yes_typed_at_the_prompt(terminal, monkeypatch):
    answer(monkeypatch, terminal, " YES \n")
    make_tasks(3)

    output = run("clear_tasks")

    assert terminal == ["Delete all 3 tasks? Type 'yes' to confirm: "]
    assert "Deleted 3 tasks." in output
    assert Task.objects.count() == 0


@pytest.mark.parametrize("reply", ["no", "", "y"])
def test_clear_tasks_deletes_nothing_unless_yes_is_typed(terminal, monkeypatch, reply):
    answer(monkeypatch, terminal, reply)
    make_tasks(3)

    output = run("clear_tasks")

    assert len(terminal) == 1
    assert "Nothing deleted." in output
    assert Task.objects.count() == 3


def test_clear_tasks_on_an_empty_table_says_so_without_asking(terminal, monkeypatch):
    answer(monkeypatch, terminal, "yes")
    assert run("clear_tasks") == "No tasks to delete.\n"
    assert terminal == []


def test_clear_tasks_with_yes_on_an_empty_table_says_so():
    assert "No tasks to delete." in run("clear_tasks", "--yes")


# --- taskstate_scheduler ----------------------------------------------------------------


def make_stale_and_fresh() -> tuple[Task, Task]:
    stale, fresh = make_tasks(2, status=Status.ENQUEUED)
    Task.objects.filter(pk=stale.pk).update(updated_at=timezone.now() - timedelta(seconds=600))
    return stale, fresh


# The job closes stale connections, as a long-lived scheduler thread must, so it runs
# outside the test's transaction here.
@pytest.mark.django_db(transaction=True)
def test_taskstate_scheduler_once_runs_the_cleanup_and_exits(settings):
    settings.TASKSTATE = {"STALE_ENQUEUED_AFTER": 500}
    _, fresh = make_stale_and_fresh()

    output = run("taskstate_scheduler", "--once")

    assert "cleanup done" in output
    assert list(Task.objects.all()) == [fresh]


def test_taskstate_scheduler_once_works_inside_a_transaction(settings):
    settings.TASKSTATE = {"STALE_ENQUEUED_AFTER": 500}
    _, fresh = make_stale_and_fresh()

    run("taskstate_scheduler", "--once")

    assert list(Task.objects.all()) == [fresh]
