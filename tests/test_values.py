"""Whatever the actor returns, raises or reports, its outcome stands and its row ends.

Each case runs through a real worker (the in-process one: StubBroker on SQLite or
MariaDB, Redis on PostgreSQL with TASKSTATE_TEST_SERVICES=1), on whichever database the
suite runs against: PostgreSQL refuses NaN and NUL in jsonb, every backend refuses lone
surrogates (they cannot be encoded to UTF-8).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest

from taskstate.core.models import Status, Task
from tests.support.writes import progress_one, write_one
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)

_keys = itertools.count()
#: A file name as os.listdir returns it for a name that is not UTF-8 (b"bad \xff name").
SURROGATE_NAME = b"bad \xff name".decode("utf-8", "surrogateescape")


def act(run_all, user, *, description: str = "hostile", **outcome: Any) -> tuple[str, Task]:
    key = f"k{next(_keys)}"
    actors.OUTCOMES[key] = outcome
    message = actors.acts_out.send(key, for_state={"user_pk": user.pk, "description": description})
    run_all()
    return key, Task.objects.get(message_id=message.message_id)


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class StrAndReprRaise(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class StrReturnsNonStr(Exception):
    def __str__(self) -> Any:
        return 42


WeirdName = type("WeirdName", (Exception,), {})
# Names the type statement cannot give, but assignment can.
WeirdName.__qualname__ = "Weird\udcff\x00<Name>" + "x" * 400
WeirdName.__module__ = 42  # type: ignore[assignment]


def test_progress_message_with_a_lone_surrogate_neither_fails_the_actor_nor_the_row(run_all, user):
    key, task = act(run_all, user, progress=[SURROGATE_NAME], result="ok")
    assert key in actors.REACHED
    assert task.status == Status.DONE
    assert task.result == "ok"
    assert task.progress_message == "bad \ufffd name"


def test_a_surrogate_pair_in_a_progress_message_becomes_its_character(run_all, user):
    _, task = act(run_all, user, progress=["smile \ud83d\ude00"], result=None)
    assert task.status == Status.DONE
    assert task.progress_message == "smile \U0001f600"


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_result_with_nan_or_infinity_ends_done_with_null_in_its_place(run_all, user, number):
    _, task = act(run_all, user, result={"ratio": number, "rows": [1.5, number]})
    assert task.status == Status.DONE
    assert task.result == {"ratio": None, "rows": [1.5, None]}


def test_result_nested_3000_deep_ends_done_without_the_result(run_all, user, caplog):
    deep: list[Any] = []
    for _ in range(3000):
        deep = [deep]
    with caplog.at_level(logging.WARNING, logger="taskstate"):
        _, task = act(run_all, user, result=deep)
    assert task.status == Status.DONE
    assert task.result is None
    assert "nested deeper" in caplog.text
    assert "cannot write task state" not in caplog.text


def test_result_with_surrogates_and_nul_in_keys_and_values_is_stored_cleaned(run_all, user):
    _, task = act(run_all, user, result={"k\udcff\x00": ["v\udcff", {"\ud800": "\x00"}]})
    assert task.status == Status.DONE
    assert task.result == {"k\ufffd": ["v\ufffd", {"\ufffd": ""}]}


def test_error_message_with_a_lone_surrogate_ends_failed_with_the_message(run_all, user):
    _, task = act(run_all, user, raises=ValueError(f"cannot open {SURROGATE_NAME}"))
    assert task.status == Status.FAILED
    assert task.error_type == "ValueError"
    assert task.error_message == "cannot open bad \ufffd name"
    assert "cannot open bad \ufffd name" in task.traceback


@pytest.mark.parametrize(
    ("error", "type_name", "message"),
    [
        (StrRaises(), "tests.test_values.StrRaises", "<unprintable StrRaises>"),
        (StrAndReprRaise(), "tests.test_values.StrAndReprRaise", "<unprintable StrAndReprRaise>"),
        (
            StrReturnsNonStr(),
            "tests.test_values.StrReturnsNonStr",
            "<unprintable StrReturnsNonStr>",
        ),
    ],
)
def test_exception_whose_str_raises_ends_failed_with_a_marker(
    run_all, user, error, type_name, message
):
    _, task = act(run_all, user, raises=error)
    assert task.status == Status.FAILED
    assert task.error_type == type_name
    assert task.error_message == message


def test_exception_type_with_a_weird_name_ends_failed_with_a_clean_name(run_all, user):
    _, task = act(run_all, user, raises=WeirdName("boom"))
    assert task.status == Status.FAILED
    assert task.error_type.startswith("42.Weird\ufffd<Name>x")
    assert len(task.error_type) == 255
    assert task.error_message == "boom"


def test_description_with_a_surrogate_still_gets_a_row(run_all, user):
    _, task = act(run_all, user, description=f"import {SURROGATE_NAME}", result=1)
    assert task.status == Status.DONE
    assert task.description == "import bad \ufffd name"


def _origin(message_id: str, user_pk: Any, description: str = "d") -> Any:
    from datetime import datetime, timezone

    from taskstate.core.for_state import Origin, TaskIdentity

    return Origin(
        message_id=message_id,
        actor_name="a",
        queue_name="default",
        sent_at=datetime.now(tz=timezone.utc),
        identity=TaskIdentity(user_pk=user_pk, description=description, app_name="", model_name=""),
    )


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    "result",
    [
        pytest.param({"ratio": float("nan")}, id="nan-past-preparation"),
        pytest.param(_circular(), id="circular"),
    ],
)
def test_a_value_the_database_refuses_costs_the_value_not_the_status(user, caplog, result):
    # Straight to the state machine, past the middleware's preparation: a value the
    # database (or the driver) refuses, as an unforeseen one would be.
    from django.db import connection

    from taskstate.core import transitions as t
    from taskstate.core.states import TERMINAL_ORDER

    values = {"result": result, "error_message": "kept?", "progress": 100}
    with caplog.at_level(logging.WARNING, logger="taskstate"):
        task = write_one(_origin("refused", user.pk), Status.DONE, TERMINAL_ORDER, values)
    row = Task.objects.get(message_id="refused")
    assert task is not None and task.pk == row.pk
    assert (row.status, row.progress, row.user_id) == (Status.DONE, 100, user.pk)
    assert "cannot write task state" not in caplog.text
    if connection.vendor == "sqlite" and isinstance(result, dict):
        return  # SQLite stores NaN as given: nothing was refused
    assert "could not be written as done with its values" in caplog.text
    assert row.result is None
    assert row.error_message == t.DROPPED_TEXT


def test_progress_message_with_a_lone_surrogate_is_stored_cleaned(user):
    from taskstate.core.states import running_order

    write_one(_origin("progress", user.pk), Status.RUNNING, running_order(1), {"attempts": 1})
    assert progress_one(_origin("progress", user.pk), 1, 40, "bad \udcff") is not None
    row = Task.objects.get(message_id="progress")
    assert (row.progress, row.progress_message) == (40, "bad \ufffd")


# --- the preparation itself ---------------------------------------------------------


def test_clean_text_replaces_lone_surrogates_joins_pairs_drops_nul_and_cuts():
    from taskstate.core.values import clean_text

    assert clean_text("a\udcffb\ud83d\ude00\x00c") == "a\ufffdb\U0001f600c"
    assert clean_text("x" * 10, 5) == "xxxx\u2026"
    assert clean_text("plain", 5) == "plain"


def test_text_of_never_raises():
    from taskstate.core.values import text_of

    assert text_of(StrRaises("x")) == "StrRaises('x')"  # repr when str() fails
    assert text_of(StrAndReprRaise()) == "<unprintable tests.test_values.StrAndReprRaise>"
    assert text_of(42) == "42"


def test_json_value_turns_nan_to_null_and_refuses_what_cannot_be_stored():
    from taskstate.core.values import MAX_DEPTH, NotStorable, json_value

    assert json_value({"a": float("nan"), float("inf"): [float("-inf")]}) == {
        "a": None,
        "inf": [None],
    }
    with pytest.raises(NotStorable, match="nested deeper"):
        json_value(_nested(MAX_DEPTH + 1))
    assert json_value(_nested(MAX_DEPTH - 1)) == _nested(MAX_DEPTH - 1)
    with pytest.raises(NotStorable, match="not JSON-serialisable"):
        json_value(object())
    with pytest.raises(NotStorable, match="over RESULT_MAX_BYTES"):
        json_value("x" * 100, max_bytes=50)


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_json_value_keeps_scalar_keys_as_json_does_and_refuses_other_keys():
    from taskstate.core.values import NotStorable, json_value

    assert json_value({None: 1, True: 2, 3: 3, 1.5: 4}) == {
        "null": 1,
        "true": 2,
        "3": 3,
        "1.5": 4,
    }
    with pytest.raises(NotStorable, match="a tuple key"):
        json_value({(1, 2): "a tuple cannot be a JSON key"})


class _QualnameRaises(type):
    def __getattribute__(cls, name: str) -> Any:
        if name == "__qualname__":
            raise RuntimeError("no qualname today")
        return super().__getattribute__(name)


def test_type_name_of_a_class_whose_names_fail_or_are_missing_never_raises():
    from taskstate.core.values import type_name

    class Odd(metaclass=_QualnameRaises):
        pass

    assert type_name(Odd) == "tests.test_values.Odd"  # __name__ when __qualname__ fails
    Odd.__module__ = None  # type: ignore[assignment]
    assert type_name(Odd) == "Odd"
