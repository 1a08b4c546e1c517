"""Write docs/reference/settings.md from taskstate/core/conf.py, the one source of the settings.

Each key of ``TaskstateSettings`` becomes a section: its default, the values it accepts
(from the same rules ``manage.py check`` applies) and its ``#:`` comment; the keys of
``REMOVED_KEYS`` end the page, each with what takes its place. Run
``python scripts/settings_reference.py`` after changing a setting; ``--check`` exits 1 when
the page is out of date. The docs build (scripts/mkdocs_hooks.py) and tests/test_docs.py
check it too.
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "reference" / "settings.md"

_COMMENT = re.compile(r"^    #: ?(.*)$")
_FIELD = re.compile(r"^    ([A-Z][A-Z0-9_]*): ")

_INTRO = """\
# Settings

<!-- Written by scripts/settings_reference.py from taskstate/core/conf.py: edit those, not this page. -->

Every setting lives in one dict in your project's settings:

```python
TASKSTATE = {
    "PROGRESS_INTERVAL": 1.0,
    "DELETE_SEEN_AFTER": 3600,
}
```

Keys you leave out keep their default. A key taskstate does not know, or a value it does
not accept, stops `manage.py check` with an error that names it (`taskstate.E002`,
`taskstate.E003`, see [System checks](checks.md)); if the process runs anyway, that one
value falls back to its default. Settings are read when they are used, so
`override_settings(TASKSTATE={...})` works in tests.

| key | default | what it is for |
| --- | --- | --- |
"""


_REMOVED_INTRO = """
## Keys no longer read

A project that still sets one of these gets a warning from `manage.py check`
(`taskstate.W005`) and the key is ignored.

"""


def _comments(source: str) -> dict[str, str]:
    """Each field's ``#:`` comment lines, joined, by field name."""
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines():
        comment = _COMMENT.match(line)
        if comment:
            pending.append(comment.group(1))
            continue
        field_match = _FIELD.match(line)
        if field_match:
            found[field_match.group(1)] = " ".join(pending)
        pending = []
    return found


def _markdown(text: str) -> str:
    """reStructuredText literals and roles in a comment, as Markdown code."""
    text = re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _first_sentence(text: str) -> str:
    """The comment up to its first full stop, for the summary table."""
    return re.split(r"(?<=[a-z)])\. ", text, maxsplit=1)[0].rstrip(".") + "."


def _value(value: Any) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value!r}`"


def _accepts(name: str, default: Any, metadata: Any) -> str:
    from taskstate.core import conf

    rule = metadata.get("rule")
    if isinstance(default, bool):
        return "`True` or `False`"
    if isinstance(default, str):
        text = "a string" if rule == "may be empty" else "a non-empty string"
        if name in conf._CHANNEL_KEYS:
            text += " of ASCII letters, digits and `_ . : -`"
        return text
    kind = "a whole number" if isinstance(default, int) else "a number (int or float)"
    return kind + (", above zero" if rule == "above zero" else ", zero or more")


def render() -> str:
    """The whole page, from the settings' definitions and comments."""
    from taskstate.core import conf

    comments = _comments(inspect.getsource(conf.TaskstateSettings))
    definitions = fields(conf.TaskstateSettings)
    table = "".join(
        f"| [`{f.name}`](#{f.name.lower()}) | {_value(f.default)} "
        f"| {_first_sentence(_markdown(comments.get(f.name, '')))} |\n"
        for f in definitions
    )
    sections = []
    for f in definitions:
        sections.append(
            f"## `{f.name}`\n\n"
            f"Default: {_value(f.default)}. Accepts {_accepts(f.name, f.default, f.metadata)}.\n\n"
            f"{_markdown(comments.get(f.name, ''))}\n"
        )
    removed = "".join(
        f"| `{key}` | {_markdown(reason)} |\n" for key, reason in sorted(conf.REMOVED_KEYS.items())
    )
    return (
        _INTRO
        + table
        + "\n"
        + "\n".join(sections)
        + _REMOVED_INTRO
        + "| key | what takes its place |\n| --- | --- |\n"
        + removed
    )


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    text = render()
    if "--check" in argv:
        if PAGE.read_text(encoding="utf-8") != text:
            print(
                f"{PAGE.relative_to(ROOT)} is out of date: run python scripts/settings_reference.py"
            )
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
