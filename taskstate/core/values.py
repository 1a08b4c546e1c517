"""Making whatever an actor or a sender hands over storable on every backend (lone
surrogates, NUL, NaN, deep nesting, a raising ``__str__``), so that an odd value costs at
most itself, never the row or the actor's outcome (docs/reliability.md).
"""

from __future__ import annotations

import json
import math
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

#: Results nested deeper than this are not stored: MariaDB's JSON check refuses more than
#: 31 levels of arrays and objects (MySQL's 100), and a value inside counts one more here.
MAX_DEPTH = 30
UNPRINTABLE = "<unprintable {}>"


class NotStorable(ValueError):
    """A value that cannot be stored; its message says why."""


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
        value = value[: max(limit - 1, 0)] + "\u2026" if limit else ""
    return value


def text_of(value: Any, limit: int | None = None) -> str:
    """The text of any object (``str()``, else ``repr()``, else ``<unprintable TypeName>``),
    cleaned and cut; never raises."""
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
    """(type name, ``str()`` or ``<unprintable TypeName>``) of an exception; never raises."""
    try:
        message = str(exception)
    except Exception:
        message = None
    if not isinstance(message, str):
        message = UNPRINTABLE.format(_attribute_text(type(exception), "__name__") or "?")
    type_text = clean_text(type_name(type(exception)), 255)
    return type_text, clean_text(str.__str__(message), message_limit)


def json_value(value: Any, max_bytes: int | None = None) -> Any:
    """``value`` as storable JSON: NaN and infinities None (as ``JSON.stringify``), text
    cleaned. :class:`NotStorable` when too deep, circular, not serialisable or too big."""
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
