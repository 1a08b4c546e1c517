"""Reading the ``for_state`` keyword argument that asks for a message to be tracked.

Whatever a caller passes, nothing here raises: bad values are logged and dropped, so
tracking can never fail a ``send()`` or an actor.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection, models

from taskstate.core.conf import get_settings
from taskstate.core.values import NotStorable, json_value, text_of

logger = logging.getLogger("taskstate")

#: Option on a message sent by a retry: the pk of the task it retries.
RETRY_OF_OPTION = "taskstate_retry_of"
#: The message option that carries the sender's active language (``Task.language``).
LANGUAGE_OPTION = "taskstate_language"
#: Options of one delivery of a message (Dramatiq's and its brokers'), not of the message.
_IN_FLIGHT_OPTIONS = frozenset(
    {"eta", "retries", "traceback", "requeue_timestamp", "redis_message_id", "throws"}
)


def retry_message(message: Any) -> dict[str, Any] | None:
    """The actor, arguments and options a retry of ``message`` sends again (its
    ``Task.retry_message``); None, with a warning, when over ``RETRY_MESSAGE_MAX_BYTES``."""
    options = {
        key: value
        for key, value in message.options.items()
        # Our own: the retry's sender sets its language and the task it retries.
        if key not in _IN_FLIGHT_OPTIONS and key not in (RETRY_OF_OPTION, LANGUAGE_OPTION)
    }
    stored = {
        "actor_name": message.actor_name,
        "args": list(message.args),
        "kwargs": message.kwargs,
        "options": options,
    }
    try:
        return dict(json_value(stored, get_settings().RETRY_MESSAGE_MAX_BYTES))
    except NotStorable as exc:
        logger.warning(
            "taskstate: message %s is not kept for a retry: %s (RETRY_MESSAGE_MAX_BYTES).",
            message.message_id,
            exc,
        )
        return None


#: The messages a tracked group's ``run()`` is sending in this context and moves the rows
#: of itself, in one statement (``taskstate.core.grouping``).
group_sending: ContextVar[frozenset[str]] = ContextVar(
    "taskstate_group_sending", default=frozenset()
)


def moved_by_its_group(message_id: str) -> bool:
    """Whether ``message_id``'s row is moved on by the group sending it (``StateMiddleware``
    then writes nothing for it)."""
    return message_id in group_sending.get()


KNOWN_KEYS = frozenset({"user_pk", "description", "app_name", "model_name", "retryable", "object"})
_MAX_LENGTHS = {"description": 255, "app_name": 100, "model_name": 100}
#: Longest ``Task.object_type`` ("app_label.model_name") and ``Task.object_pk``.
OBJECT_TYPE_MAX = 201
OBJECT_PK_MAX = 255


@dataclass(frozen=True)
class TaskIdentity:
    """What ``for_state`` says about a task: who owns it and how to describe it."""

    user_pk: Any
    description: str
    app_name: str
    model_name: str
    retryable: bool = False
    #: ``for_state["object"]``: its model as ``"app_label.model_name"``, its pk as text.
    object_type: str = ""
    object_pk: str = ""


@dataclass(frozen=True)
class Origin:
    """What the message says about a task: enough to create its row anywhere."""

    message_id: str
    actor_name: str
    queue_name: str
    sent_at: datetime
    identity: TaskIdentity
    #: The sender's active language (rows are rendered in it), or "" for the site's.
    language: str = ""


def tracked_for_state(kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``for_state`` dict of a message's kwargs, or None when it is not tracked."""
    if not kwargs:
        return None
    value = kwargs.get("for_state")
    return value if isinstance(value, dict) else None


def make_encodable(kwargs: dict[str, Any], message_id: str) -> None:
    """Make ``kwargs["for_state"]`` JSON-encodable in place, before the broker encodes it:
    a model instance becomes its pk, any other value its ``str()``, a non-dict None."""
    value = kwargs.get("for_state")
    if value is None:
        return
    encodable = _json_encodable(value)
    if not isinstance(value, dict):
        logger.warning(
            "taskstate: for_state of message %s is a %s, not a dict; %s.",
            message_id,
            type(value).__name__,
            "not tracking it" if encodable else "it cannot be encoded: sending None instead",
        )
        if not encodable:
            kwargs["for_state"] = None
        return
    if encodable:
        return
    try:
        kwargs["for_state"] = {
            text_of(key): _encodable(text_of(key), item, message_id) for key, item in value.items()
        }
    except Exception:
        logger.warning(
            "taskstate: for_state of message %s cannot be read; sending None instead.",
            message_id,
            exc_info=True,
        )
        kwargs["for_state"] = None


def _json_encodable(value: Any) -> bool:
    # Any exception means no: a RecursionError, whatever a hostile __str__ raises.
    try:
        json.dumps(value)
    except Exception:
        return False
    return True


def _encodable(key: str, value: Any, message_id: str) -> Any:
    if key == "object" and isinstance(value, models.Model):
        return object_reference(value, message_id)
    if _json_encodable(value):
        return value
    if isinstance(value, models.Model):
        logger.warning(
            "taskstate: for_state[%r] of message %s is a %s instance; using its pk. "
            "Pass the pk itself.",
            key,
            message_id,
            type(value).__name__,
        )
        return value.pk if _is_plain(value.pk) else str(value.pk)
    logger.warning(
        "taskstate: for_state[%r] of message %s is not JSON-serialisable (%s); using str().",
        key,
        message_id,
        type(value).__name__,
    )
    return text_of(value)


def _is_plain(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def parse_for_state(for_state: dict[str, Any], message_id: str, *, warn: bool) -> TaskIdentity:
    """The identity ``for_state`` describes: unknown keys ignored, long strings cut, a bad
    ``user_pk`` dropped. ``warn``: log each problem (the worker's False: the sender did)."""
    log = logger.warning if warn else logger.debug
    unknown = set(for_state) - KNOWN_KEYS
    if unknown:
        log(
            "taskstate: for_state of message %s has unknown keys %s; known keys are %s.",
            message_id,
            sorted(map(str, unknown)),
            sorted(KNOWN_KEYS),
        )
    texts = {}
    for key, limit in _MAX_LENGTHS.items():
        value = for_state.get(key)
        text = "" if value is None else text_of(value)
        if len(text) > limit:
            log(
                "taskstate: for_state[%r] of message %s is %d characters long; keeping %d.",
                key,
                message_id,
                len(text),
                limit,
            )
            text = text[: limit - 1] + "\u2026"
        texts[key] = text
    return TaskIdentity(
        user_pk=_user_pk(for_state.get("user_pk"), message_id, log),
        description=texts["description"],
        app_name=texts["app_name"],
        model_name=texts["model_name"],
        retryable=for_state.get("retryable") is True,
        **_object_columns(for_state.get("object"), message_id, log),
    )


def object_reference(obj: Any, message_id: str = "") -> dict[str, str] | None:
    """``for_state["object"]`` as a message carries it, ``{"model": label, "pk": text}``,
    or None (logged) for a value that names no saved object."""
    saved = isinstance(obj, models.Model) and obj.pk is not None and not obj._state.adding
    if not saved:
        logger.warning(
            "taskstate: for_state['object'] of message %s is %s %s; the task is about no object.",
            message_id,
            "an unsaved" if isinstance(obj, models.Model) else "not a model instance but a",
            type(obj).__name__,
        )
        return None
    return {"model": obj._meta.label_lower, "pk": text_of(obj.pk)}


def _object_columns(value: Any, message_id: str, log: Any) -> dict[str, str]:
    """``object_type`` and ``object_pk`` of a ``for_state["object"]`` that names a model
    of this project and fits the columns; else none."""
    if value is None:
        return {}
    if isinstance(value, models.Model):
        value = object_reference(value, message_id)
        if value is None:
            return {}
    if (
        isinstance(value, dict)
        and isinstance(value.get("model"), str)
        and _is_plain(value.get("pk"))
    ):
        label, pk = value["model"].lower(), text_of(value["pk"])
        try:
            apps.get_model(label)
        except (LookupError, ValueError):
            log(
                "taskstate: for_state['object'] of message %s names the model %r, which this "
                "project does not have; the task is about no object.",
                message_id,
                label,
            )
            return {}
        if pk and len(label) <= OBJECT_TYPE_MAX and len(pk) <= OBJECT_PK_MAX:
            return {"object_type": label, "object_pk": pk}
    log(
        "taskstate: for_state['object'] of message %s is not a saved model instance (%r); "
        "the task is about no object.",
        message_id,
        value,
    )
    return {}


def _user_pk(value: Any, message_id: str, log: Any) -> Any:
    if value is None:
        return None
    model = settings.AUTH_USER_MODEL
    key = (model, type(value), value) if type(value) in (int, str) else None
    known = _valid_pks.get(key, _UNCHECKED) if key is not None else _UNCHECKED
    if known is not _UNCHECKED:
        return known  # checked already (one sender's messages, a group's children)
    pk_field = get_user_model()._meta.pk
    assert pk_field is not None
    try:
        pk = _canonical_pk(pk_field, value)
        if isinstance(pk, int):
            low, high = connection.ops.integer_field_range(pk_field.get_internal_type())
            if (low is not None and pk < low) or (high is not None and pk > high):
                raise ValidationError("out of range")
        # What the database will be given: some backends refuse values here (MySQL: 0).
        pk_field.get_db_prep_value(pk, connection)
    except (ValidationError, TypeError, ValueError):
        log(
            "taskstate: for_state['user_pk'] of message %s is not a valid user pk (%r); "
            "the task gets no user.",
            message_id,
            value,
        )
        return None
    if key is not None:
        if len(_valid_pks) >= 1024:
            _valid_pks.clear()
        _valid_pks[key] = pk
    return pk


#: User pks found valid, by user model, type and value as given.
_valid_pks: dict[tuple[str, type, Any], Any] = {}
_UNCHECKED = object()

_DIGITS = re.compile(r"-?[1-9][0-9]*|0", re.ASCII)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII | re.I)


def _canonical_pk(pk_field: models.Field[Any, Any], value: Any) -> Any:
    """``value`` as the pk field's Python value, when written canonically: an int or plain
    ASCII digits (above zero for auto fields), a UUID or its hyphenated form, else what the
    field accepts from a str or an int."""
    if isinstance(value, (bool, float, dict, list)):
        raise ValidationError("not a primary key")
    if isinstance(pk_field, models.IntegerField):  # AutoField and BigAutoField too
        if isinstance(value, str):
            if _DIGITS.fullmatch(value) is None:
                raise ValidationError("not ASCII digits")
            value = int(value)
        if not isinstance(value, int):
            raise ValidationError("not an integer")
        if isinstance(pk_field, models.fields.AutoFieldMixin) and value <= 0:
            raise ValidationError("auto fields are above zero")
        return value
    if isinstance(pk_field, models.UUIDField):
        if isinstance(value, uuid.UUID):
            return value
        if not isinstance(value, str) or _UUID.fullmatch(value) is None:
            raise ValidationError("not a hyphenated UUID")
        return uuid.UUID(value)
    if not isinstance(value, (str, int)) or value == "":
        raise ValidationError("not a primary key")
    return pk_field.to_python(value)
