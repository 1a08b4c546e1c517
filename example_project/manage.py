#!/usr/bin/env python
"""Django's command-line utility for the dramatiq-taskstate demo site."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    here = str(Path(__file__).resolve().parent)
    # Processes started from here (rundramatiq execs the dramatiq CLI) must import
    # demo_site and demo too, whatever the current directory is.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
