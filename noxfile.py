"""The version matrix: ``nox`` (from the ``dev`` dependency group) runs it.

Every cell runs the unit suite (SQLite, StubBroker, the in-process demo in Chromium; no
services). The oldest and the newest cell also run the whole suite against PostgreSQL,
Redis, a ``rundramatiq`` worker, uvicorn and Chromium (``TASKSTATE_TEST_SERVICES=1``).

Six cells cover every Python (3.10-3.13) and every Django x Dramatiq pair at least once;
Django 6.x needs Python >= 3.12. The full cross product (16 cells) would take more than
the half hour CI may spend on a 2-core machine. Interpreters come from PATH, and from
pyenv (``/root/.pyenv/versions``) when it is there; nothing is downloaded.

    nox -l                      # the sessions
    nox -s unit                 # every cell, unit suite
    nox -s "services"           # oldest and newest cell, with services
"""

from __future__ import annotations

import glob
import os

import nox

nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["unit", "services"]

# pyenv's interpreters, found by their versioned names (python3.10, ...).
_PYENV = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0-9]*/bin")))
if _PYENV:
    os.environ["PATH"] = os.pathsep.join([*_PYENV, os.environ.get("PATH", "")])

PYPROJECT = nox.project.load_toml("pyproject.toml")

DJANGO = {"5.2": "Django==5.2.*", "6.0": "Django==6.0.*", "6.1": "Django==6.1.*"}
DRAMATIQ = {"1.17": "dramatiq[redis]==1.17.*", "2": "dramatiq[redis]>=2,<3"}

# (python, django, dramatiq), oldest first. Keep docs/development.md's table in step.
CELLS = [
    ("3.10", "5.2", "1.17"),
    ("3.11", "5.2", "2"),
    ("3.12", "6.0", "1.17"),
    ("3.12", "6.1", "1.17"),
    ("3.13", "6.0", "2"),
    ("3.13", "6.1", "2"),
]
EDGES = [CELLS[0], CELLS[-1]]
# In CI this unit cell runs against MariaDB (the MySQL upsert path; TASKSTATE_TEST_DB=mariadb
# in tests/settings.py) instead of SQLite, and records coverage: a pass of its own would
# run the whole unit suite once more.
MARIADB_CELL = ("3.12", "6.0", "1.17")
# In CI (TASKSTATE_MATRIX_CI=1) the unit session runs the MariaDB cell alone: with the
# README's pass (Python 3.11, Django 5.2, Dramatiq 2.x) and the services session's oldest
# and newest cells, every Python, Django and Dramatiq version is tested, within CI's 30
# minutes on two cores. The two cells left out only pair versions tested elsewhere.
UNIT_CELLS = CELLS
if os.environ.get("TASKSTATE_MATRIX_CI") == "1":
    UNIT_CELLS = [MARIADB_CELL]


# Every pass runs in two pytest workers (pytest-xdist): CI's lanes end at about the same
# time on two cores once the services cells, which mostly wait, are done.
_TWO_WORKERS = ("-n", "2")


def _ids(cells: list[tuple[str, str, str]]) -> list[str]:
    return [f"py{p}-django{d}-dramatiq{q}" for p, d, q in cells]


def _install(session: nox.Session, django: str, dramatiq: str) -> None:
    session.install(
        "-e",
        ".",
        *nox.project.dependency_groups(PYPROJECT, "test", "docs"),
        DJANGO[django],
        DRAMATIQ[dramatiq],
    )
    session.run(
        "python",
        "-c",
        "import django, dramatiq, sys; print(sys.version.split()[0], "
        "'Django', django.get_version(), 'Dramatiq', dramatiq.__version__)",
    )


def _pytest(session: nox.Session, *args: str, **env: str) -> None:
    session.run("pytest", "-q", "-p", "no:cacheprovider", *args, *session.posargs, env=env)


@nox.session(reuse_venv=True)
@nox.parametrize(("python", "django", "dramatiq"), UNIT_CELLS, ids=_ids(UNIT_CELLS))
def unit(session: nox.Session, django: str, dramatiq: str) -> None:
    """The suite without services: SQLite, StubBroker, in-process worker."""
    _install(session, django, dramatiq)
    ci = os.environ.get("TASKSTATE_MATRIX_CI") == "1"
    if ci and (session.python, django, dramatiq) == MARIADB_CELL:
        session.install("mysqlclient>=2.2")
        # Browser tests run in the other passes; coverage is recorded (the MySQL branches).
        _pytest(
            session,
            *_TWO_WORKERS,
            "-m",
            "not browser",
            TASKSTATE_TEST_SERVICES="0",
            TASKSTATE_TEST_DB="mariadb",
        )
        return
    # Coverage is recorded by the passes that exercise the most (services): not here.
    # In CI the browser tests run in the services cells and the README pass; here only
    # those a version brings (marked django6: Django 6's CSP page, django.tasks in the
    # demo), with tests/test_backends.py, which the Django 5.2 cells skip.
    args = ["-m", "not browser or django6"] if ci else []
    _pytest(session, *_TWO_WORKERS, *args, TASKSTATE_TEST_SERVICES="0", COVERAGE_PROCESS_START="")


@nox.session(reuse_venv=True)
@nox.parametrize(("python", "django", "dramatiq"), EDGES, ids=_ids(EDGES))
def services(session: nox.Session, django: str, dramatiq: str) -> None:
    """The whole suite against PostgreSQL, Redis, real worker and server processes."""
    _install(session, django, dramatiq)
    # Two pytest workers: these tests spend most of their time waiting on the processes
    # they start (each worker has Redis databases of its own: tests/settings.py). The
    # slowest tests are listed: these cells set how long CI takes.
    env = {"TASKSTATE_TEST_SERVICES": "1"}
    args: list[str] = []
    if os.environ.get("TASKSTATE_MATRIX_CI") == "1":
        if (session.python, django, dramatiq) == CELLS[0]:
            # In CI the oldest cell leaves the pages in Chromium to the newest cell and
            # the README's pass (Django 5.2): it runs the rest, the worker and stream
            # processes on Python 3.10 and Dramatiq 1.17, within CI's 30 minutes on two
            # cores.
            args = ["-m", "not browser"]
        else:
            # Coverage is recorded in the oldest cell, which has no browser to slow down,
            # in the MariaDB cell and in the README's pass (the pages): not here too.
            env["COVERAGE_PROCESS_START"] = ""
    _pytest(session, *_TWO_WORKERS, "--durations=25", *args, **env)
