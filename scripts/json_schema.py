"""Write taskstate/static/taskstate/task.schema.json from taskstate/web/task_json.py.

The ``TypedDict`` classes in ``taskstate.web.task_json`` are the one source of the JSON form of
a task; the schema (draft 2020-12) is derived from them, their docstrings and the ``Doc``
notes on their keys. Run ``python scripts/json_schema.py`` after changing them; ``--check``
exits 1 when the file is out of date (tests/test_task_json.py checks it too).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "taskstate" / "static" / "taskstate" / "task.schema.json"
#: The schema's ``$id``: where the schema file is served (under ``STATIC_URL``).
SCHEMA_PATH = "taskstate/task.schema.json"
#: The shapes the schema defines, in the order it lists them; the root is the first.
SCHEMA_TYPES = (
    "TaskJSON",
    "Progress",
    "Times",
    "ErrorSummary",
    "Actions",
    "GroupCounts",
    "TaskPage",
    "ProgressEvent",
    "RemovedEvent",
    "ChangedEvent",
    "ActionAnswer",
    "ErrorAnswer",
)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``TaskJSON``, with every other shape under ``$defs``.

    To validate another shape, point the root at it:
    ``{**schema, "$ref": "#/$defs/TaskPage"}``.
    """
    from taskstate.web import task_json as shapes

    defs: dict[str, Any] = {}
    for name in SCHEMA_TYPES:
        _define(getattr(shapes, name), defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_PATH,
        "title": "dramatiq-taskstate task",
        "$ref": f"#/$defs/{SCHEMA_TYPES[0]}",
        "$defs": {name: defs[name] for name in SCHEMA_TYPES},
    }


def schema_text() -> str:
    """The schema file's text, as committed."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def _define(kind: type, defs: dict[str, Any]) -> dict[str, Any]:
    name = kind.__name__
    if name not in defs:
        defs[name] = {}  # a placeholder while its keys are defined
        hints = typing.get_type_hints(kind, include_extras=True)
        required: frozenset[str] = getattr(kind, "__required_keys__", frozenset())
        defs[name] = {
            "type": "object",
            "description": " ".join(inspect.cleandoc(kind.__doc__ or "").split("\n\n")[0].split()),
            "properties": {key: _schema_of(hint, defs) for key, hint in hints.items()},
            "required": [key for key in hints if key in required],
            "additionalProperties": False,
        }
    return {"$ref": f"#/$defs/{name}"}


def _schema_of(hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    from taskstate.web.task_json import Doc

    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *notes = typing.get_args(hint)
        schema = _schema_of(base, defs)
        for note in notes:
            if isinstance(note, Doc):
                schema = _noted(schema, note)
        return schema
    if origin is Literal:
        return {"type": "string", "enum": list(typing.get_args(hint))}
    if origin in (Union, types.UnionType):
        options = [_schema_of(arg, defs) for arg in typing.get_args(hint)]
        if all(set(option) == {"type"} for option in options):
            return {"type": [option["type"] for option in options]}
        return {"anyOf": options}
    if origin is list:
        (item,) = typing.get_args(hint)
        return {"type": "array", "items": _schema_of(item, defs)}
    plain = {type(None): "null", bool: "boolean", int: "integer", str: "string"}
    if hint in plain:
        return {"type": plain[hint]}
    if typing.is_typeddict(hint):
        return _define(hint, defs)
    raise TypeError(f"no JSON Schema for {hint!r}")


def _noted(schema: dict[str, Any], note: Any) -> dict[str, Any]:
    if "$ref" in schema or "anyOf" in schema:
        # Beside a reference, keywords apply too (2020-12); kept to the description.
        return {**schema, "description": note.text}
    noted = {**schema, "description": note.text}
    for key in ("format", "minimum", "maximum"):
        if getattr(note, key) is not None:
            noted[key] = getattr(note, key)
    return noted


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    text = schema_text()
    if "--check" in argv:
        if SCHEMA.read_text(encoding="utf-8") != text:
            print(f"{SCHEMA.relative_to(ROOT)} is out of date: run scripts/json_schema.py")
            return 1
        return 0
    SCHEMA.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
