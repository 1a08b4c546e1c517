"""Fuzzed actor outcomes through a real worker: the outcome stands, the row ends.

Hypothesis draws what an actor returns or raises, the progress messages it reports and
the description it is sent with, hostile values weighted in (lone surrogates, NUL, NaN,
deep nesting, exceptions whose ``__str__`` raises). Whatever is drawn, every message
ends with a final row (``done`` when the actor returned, ``failed`` when it raised),
``progress()`` never raised into the actor, and no write was taken for an outage.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from taskstate.core.models import Status, Task
from tests.test_values import StrAndReprRaise, StrRaises, StrReturnsNonStr, WeirdName
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)

_keys = itertools.count()

characters = st.one_of(
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # surrogates, lone or paired
    st.sampled_from(["\x00", "<", "&", "\u2026", "\U0001f600"]),
    st.characters(codec="utf-8"),
)
texts = st.one_of(
    st.text(characters, max_size=40),
    st.text(characters, min_size=250, max_size=600),
)


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(texts | st.integers() | st.floats(), inner, max_size=4)
    ),
    max_leaves=12,
)
results = st.one_of(
    json_like,
    st.integers(min_value=0, max_value=5_000).map(_nested),
    st.builds(object),
    st.builds(lambda n: 10**n, st.integers(min_value=4_000, max_value=5_000)),
)
exception_types = st.sampled_from(
    [ValueError, RuntimeError, KeyError, OSError, StrRaises, StrAndReprRaise, StrReturnsNonStr]
)
exceptions = st.one_of(
    st.builds(lambda kind, text: kind(text), exception_types, texts),
    texts.map(lambda text: WeirdName(text)),
)
progress_messages = st.lists(
    st.one_of(st.none(), texts, st.builds(StrRaises), st.builds(StrAndReprRaise)), max_size=3
)
outcomes = st.fixed_dictionaries(
    {
        "progress": progress_messages,
        "result": results,
        "raises": st.none() | exceptions,
        "description": texts | st.floats() | st.integers(),
    }
)


class _Outages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


# With the Redis broker (TASKSTATE_TEST_SERVICES=1) the worker's consumer threads draw
# from the global random module (maintenance chance) while Hypothesis draws an example,
# which it reads as a strategy using random.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@hsettings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(outcome=outcomes)
def test_any_actor_outcome_stands_and_ends_with_a_final_row(run_all, user, outcome):
    errors = _Outages()
    logger = logging.getLogger("taskstate")
    logger.addHandler(errors)
    try:
        key = f"fuzz{next(_keys)}"
        actors.OUTCOMES[key] = outcome
        message = actors.acts_out.send(
            key, for_state={"user_pk": user.pk, "description": outcome["description"]}
        )
        run_all()
    finally:
        logger.removeHandler(errors)
    task = Task.objects.get(message_id=message.message_id)
    assert key in actors.REACHED, "progress() raised into the actor"
    expected = Status.DONE if outcome["raises"] is None else Status.FAILED
    assert task.status == expected
    assert task.user_id == user.pk
    assert task.finished_at is not None
    assert not errors.records, errors.records
