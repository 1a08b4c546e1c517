"""Write taskstate/static/taskstate/task.schema.json from taskstate/web/task_json.py.

The ``TypedDict`` classes in ``taskstate.web.task_json`` are the one source of the JSON form of
a task; this file is generated from them. Run ``python scripts/json_schema.py`` after
changing them; ``--check`` exits 1 when the file is out of date (tests/test_task_json.py
checks it too).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "taskstate" / "static" / "taskstate" / "task.schema.json"


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from taskstate.web.task_json import schema_text

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
