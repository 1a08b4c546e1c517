"""MkDocs hooks (mkdocs.yml ``hooks``): the settings page must match taskstate/core/conf.py.

docs/reference/settings.md is written by scripts/settings_reference.py; a build with a
page that no longer matches the settings' definitions logs a warning, which
``mkdocs build --strict`` turns into a failure.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("mkdocs.hooks.taskstate")


def on_pre_build(config: Any) -> None:
    for path in (ROOT, ROOT / "scripts"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import settings_reference

    if settings_reference.PAGE.read_text(encoding="utf-8") != settings_reference.render():
        log.warning(
            "docs/reference/settings.md does not match taskstate/core/conf.py: "
            "run python scripts/settings_reference.py"
        )
