"""Shared set-up for the benchmark scripts: a PostgreSQL database of their own, Django."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Stopped by SIGTERM (kill, timeout), a benchmark unwinds as on Ctrl-C: the finally blocks
# stop the worker processes and private database clusters it started.
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def django_on_postgres(db_name: str) -> None:
    """Configure Django with the test settings on a new database ``db_name``.

    Dropped and created again each run: a database left by an older schema (migrations
    renumbered, say) would otherwise fail the migrate.
    """
    sys.path.insert(0, str(REPO))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["TASKSTATE_TEST_SERVICES"] = "1"
    os.environ["TASKSTATE_TEST_DB_NAME"] = db_name
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db_name}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
