"""Bad ``for_state`` values: a warning and a sensible row (or none), never an exception."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from taskstate.core.models import Status, Task
from tests.testapp import tasks as actors

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _warnings(caplog):
    caplog.set_level(logging.WARNING, logger="taskstate")


def test_for_state_that_is_not_a_dict_is_not_tracked_and_the_actor_runs(run_all, caplog):
    message = actors.echo_description.send(for_state="export")
    run_all()
    assert not Task.objects.filter(message_id=message.message_id).exists()
    assert "not a dict" in caplog.text


def test_for_state_that_cannot_be_encoded_is_replaced_and_send_succeeds(run_all, caplog):
    message = actors.noop.send(for_state=object())
    run_all()
    assert Task.objects.count() == 0
    assert "cannot be encoded" in caplog.text
    assert message.kwargs["for_state"] is None


@pytest.mark.parametrize("bad_pk", ["abc", 12.5, True, [1], 10**30, {"pk": 1}])
def test_malformed_user_pk_gives_a_row_without_user(run_all, caplog, bad_pk):
    message = actors.noop.send(for_state={"user_pk": bad_pk, "description": "bad pk"})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE
    assert task.user_id is None
    assert task.description == "bad pk"
    assert "not a valid user pk" in caplog.text


def test_each_message_with_a_malformed_user_pk_is_warned_of_and_a_good_pk_stays_good(
    run_all, caplog, user
):
    for _ in range(2):
        actors.noop.send(for_state={"user_pk": "abc"})
        actors.noop.send(for_state={"user_pk": str(user.pk)})
    run_all()
    # The sender warns of each message (the worker does not repeat it).
    assert caplog.text.count("not a valid user pk") == 2
    assert Counter(Task.objects.values_list("user_id", flat=True)) == {None: 2, user.pk: 2}


def test_unknown_user_pk_gives_a_row_without_user(run_all):
    message = actors.noop.send(for_state={"user_pk": 424_242})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.status == Status.DONE
    assert task.user_id is None


def test_user_pk_given_as_a_string_is_accepted(run_all, user):
    message = actors.noop.send(for_state={"user_pk": str(user.pk)})
    run_all()
    assert Task.objects.get(message_id=message.message_id).user_id == user.pk


def test_user_instance_instead_of_pk_is_turned_into_its_pk(run_all, user, caplog):
    message = actors.noop.send(for_state={"user_pk": user, "description": "instance"})
    run_all()
    assert Task.objects.get(message_id=message.message_id).user_id == user.pk
    assert "Pass the pk itself" in caplog.text


def test_values_that_are_not_json_become_text(run_all, user, caplog):
    message = actors.noop.send(for_state={"user_pk": user.pk, "description": {1, 2}})
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert task.description in ("{1, 2}", "{2, 1}")
    assert "not JSON-serialisable" in caplog.text


def test_over_long_strings_are_cut_to_the_column(run_all, user, caplog):
    message = actors.noop.send(
        for_state={
            "user_pk": user.pk,
            "description": "d" * 5000,
            "app_name": "a" * 500,
            "model_name": "m" * 500,
        }
    )
    run_all()
    task = Task.objects.get(message_id=message.message_id)
    assert len(task.description) == 255 and task.description.endswith("\u2026")
    assert len(task.app_name) == 100 and len(task.model_name) == 100
    assert "characters long" in caplog.text


def test_unknown_keys_are_ignored_with_a_warning(run_all, user, caplog):
    message = actors.noop.send(for_state={"user_pk": user.pk, "colour": "red"})
    run_all()
    assert Task.objects.get(message_id=message.message_id).status == Status.DONE
    assert "unknown keys ['colour']" in caplog.text


def test_html_in_description_is_stored_as_text(run_all, user):
    message = actors.noop.send(for_state={"user_pk": user.pk, "description": "<b>x</b>"})
    run_all()
    assert Task.objects.get(message_id=message.message_id).description == "<b>x</b>"


# Security II, case 6: only what the user model's pk field takes as a canonical value.
NOT_CANONICAL_INT_PKS = [" 1 ", "1 ", "\u0661", "+2", "1_0", "01", "0x1", "1.0", "1e2", "", "-0"]


@pytest.mark.parametrize("bad_pk", NOT_CANONICAL_INT_PKS)
def test_user_pk_that_is_not_a_canonical_integer_is_dropped(caplog, bad_pk):
    from taskstate.core.for_state import parse_for_state

    identity = parse_for_state({"user_pk": bad_pk}, "m1", warn=True)
    assert identity.user_pk is None
    assert "not a valid user pk" in caplog.text


@pytest.mark.parametrize(("given", "expected"), [(7, 7), ("7", 7), ("123456789", 123456789)])
def test_canonical_integer_user_pks_are_kept_as_ints(given, expected):
    from taskstate.core.for_state import parse_for_state

    assert parse_for_state({"user_pk": given}, "m1", warn=True).user_pk == expected


@pytest.mark.parametrize("bad_pk", [-1, "-1", 0])
def test_user_pk_outside_what_an_auto_field_hands_out_is_dropped(caplog, bad_pk):
    from taskstate.core.for_state import parse_for_state

    assert parse_for_state({"user_pk": bad_pk}, "m1", warn=True).user_pk is None


class _ItemsFail(dict):  # type: ignore[type-arg]
    """A dict whose items cannot be read (a lazy mapping whose backend is gone)."""

    def items(self):  # type: ignore[override]
        raise ConnectionError("the mapping's backend went away")


def test_for_state_whose_items_cannot_be_read_is_replaced_by_none(caplog):
    from taskstate.core.for_state import make_encodable

    kwargs = {"for_state": _ItemsFail(user_pk=object())}
    with caplog.at_level(logging.WARNING, logger="taskstate"):
        make_encodable(kwargs, "m-items")
    assert kwargs["for_state"] is None
    assert "for_state of message m-items cannot be read" in caplog.text


def test_uuid_and_text_primary_keys_are_taken_only_when_canonical():
    import uuid

    from django.core.exceptions import ValidationError
    from django.db import models

    from taskstate.core.for_state import _canonical_pk

    uuid_pk = models.UUIDField(primary_key=True)
    key = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert _canonical_pk(uuid_pk, key) == key
    assert _canonical_pk(uuid_pk, str(key)) == key
    assert _canonical_pk(uuid_pk, str(key).upper()) == key
    for bad in [key.hex, f"{{{key}}}", f" {key}", 12345678, None]:
        with pytest.raises(ValidationError):
            _canonical_pk(uuid_pk, bad)

    text_pk = models.CharField(primary_key=True, max_length=20)
    assert _canonical_pk(text_pk, "alice") == "alice"
    assert _canonical_pk(text_pk, 7) == "7"
    for bad in ["", None, 1.5, ["alice"]]:
        with pytest.raises(ValidationError):
            _canonical_pk(text_pk, bad)
