"""Making whatever an actor or a sender hands over storable, on every backend.

Values reach a row from code we do not control: file names with undecodable bytes (lone
surrogates, which no backend can encode to UTF-8), NaN in a result (PostgreSQL's jsonb
refuses it), structures nested thousands deep, exceptions whose ``__str__`` raises. Each
function here returns something every backend stores, and never raises, so such a value
costs at most itself, never the row or the actor's outcome:

- text: lone surrogates become U+FFFD (a valid surrogate pair becomes its character),
  NUL characters are dropped, and the text is cut to its column with a trailing "…";
- JSON: NaN and the infinities become ``null`` (what JavaScript's ``JSON.stringify``
  does), strings and keys are cleaned as text; a result nested deeper than
  :data:`MAX_DEPTH`, circular, not JSON-serialisable or over its size cap is not stored;
- an object's text (``str()``, then ``repr()``, then ``<unprintable TypeName>``).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

logger = logging.getLogger("taskstate")

#: Results nested deeper than this are not stored (MySQL's JSON allows 100 levels).
MAX_DEPTH = 64
#: What a text becomes when it cannot be given at all.
UNPRINTABLE = "<unprintable {}>"
_ELLIPSIS = "\u2026"


class NotStorable(ValueError):
    """A value that cannot be stored; its message says why, for the log."""


def clean_text(value: str, limit: int | None = None) -> str:
    """``value`` without lone surrogates or NUL characters, cut to ``limit`` characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Through UTF-16: surrogate pairs join into their character, lone ones fail
        # to decode and become U+FFFD.
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if "\x00" in value:
        value = value.replace("\x00", "")
    if limit is not None and len(value) > limit:
        value = value[: max(limit - 1, 0)] + _ELLIPSIS if limit else ""
    return value


def text_of(value: Any, limit: int | None = None) -> str:
    """The text of any object, cleaned and cut; never raises.

    ``str()`` first; when that raises or gives no string, ``repr()``; when that fails
    too, ``<unprintable TypeName>``.
    """
    if type(value) is str:
        return clean_text(value, limit)
    for render in (str, repr):
        try:
            text = render(value)
        except Exception:
            continue
        if isinstance(text, str):
            return clean_text(str.__str__(text), limit)
    return clean_text(UNPRINTABLE.format(type_name(type(value))), limit)


def type_name(kind: type) -> str:
    """``module.QualName`` of a class (builtins without a module); never raises."""
    qualname = _attribute_text(kind, "__qualname__") or _attribute_text(kind, "__name__") or "?"
    module = _attribute_text(kind, "__module__")
    return qualname if module in (None, "builtins") else f"{module}.{qualname}"


def _attribute_text(kind: type, name: str) -> str | None:
    try:
        value = getattr(kind, name, None)
    except Exception:
        return None
    if value is None:
        return None
    return clean_text(value) if isinstance(value, str) else text_of(value)


def exception_facts(exception: BaseException, message_limit: int) -> tuple[str, str]:
    """(type name, message) of an exception, both storable; never raises.

    The message is ``str(exception)``, or ``<unprintable TypeName>`` when that raises or
    gives no string (as the traceback module says ``<exception str() failed>``).
    """
    try:
        message = str(exception)
    except Exception:
        message = None
    if not isinstance(message, str):
        message = UNPRINTABLE.format(_attribute_text(type(exception), "__name__") or "?")
    return clean_text(type_name(type(exception)), 255), clean_text(
        str.__str__(message), message_limit
    )


def json_value(value: Any, max_bytes: int | None = None) -> Any:
    """``value`` made storable as JSON on every backend.

    NaN and infinities become None, text is cleaned (surrogates, NUL). Raises
    :class:`NotStorable` (a ``ValueError``) when the value is nested deeper than
    :data:`MAX_DEPTH`, circular, not JSON-serialisable, or its JSON is over ``max_bytes``.
    """
    try:
        cleaned = _clean_json(value, 0)
        encoded = json.dumps(cleaned, cls=DjangoJSONEncoder, allow_nan=False)
    except NotStorable:
        raise
    except RecursionError as exc:
        raise NotStorable(f"nested deeper than {MAX_DEPTH} levels") from exc
    except Exception as exc:
        raise NotStorable(f"not JSON-serialisable ({text_of(exc, 200)})") from exc
    if max_bytes:
        size = len(encoded.encode())
        if size > max_bytes:
            raise NotStorable(f"{size} bytes, over RESULT_MAX_BYTES")
    return json.loads(encoded)


def _clean_json(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise NotStorable(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, dict):
        return {_clean_key(key): _clean_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(item, depth + 1) for item in value]
    # Dates, decimals, UUIDs, ...: what DjangoJSONEncoder makes of them (TypeError if nothing).
    return _clean_json(DjangoJSONEncoder().default(value), depth + 1)


def _clean_key(key: Any) -> Any:
    if isinstance(key, str):
        return clean_text(key)
    if isinstance(key, float) and not math.isfinite(key):
        return str(key)
    if key is None or isinstance(key, (bool, int, float)):
        return key
    raise NotStorable(f"a {type_name(type(key))} key")
