"""Database, Django, process and reporting helpers shared by the benchmark scripts.

Every script sets up its own PostgreSQL database, runs Django with ``tests.settings``
in services mode (PostgreSQL, Redis broker, django-eventstream over Redis pub/sub) and
talks to real uvicorn / ``rundramatiq`` processes on loopback only.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import _setup  # noqa: F401  (a SIGTERM unwinds: what the benchmark started is stopped)
import psutil

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PG_DSN = "host={host} port={port} user={user} dbname={db}"


# --- database and Django -------------------------------------------------------------


#: Roles the benchmark's processes connect as: ``ROLE`` (owner of the database; this
#: process, the publisher, the worker) and ``WEB_ROLE`` (the uvicorn process). Their
#: CONNECTION LIMITs keep a benchmark from taking every connection of a PostgreSQL
#: server that others share, and keep the web process from starving the writers.
ROLE = "taskstate_bench"
WEB_ROLE = "taskstate_bench_web"


def pg_dsn(db: str, user: str | None = None) -> str:
    return PG_DSN.format(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=os.environ.get("PGPORT", "5432"),
        user=user or os.environ.get("TASKSTATE_BENCH_PGADMIN", "postgres"),
        db=db,
    )


def _admin() -> Any:
    import psycopg

    return psycopg.connect(pg_dsn("postgres"), autocommit=True)


def ensure_database(name: str, web_limit: int, jobs_limit: int) -> tuple[int, int]:
    """Roles, and database ``name`` (owned by ``ROLE``) created afresh; returns the (web,
    jobs) connection limits set, lowered if the server has fewer connections free."""
    from psycopg import sql

    with _admin() as conn:
        max_conn = int(conn.execute("SHOW max_connections").fetchone()[0])
        reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])
        in_use = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND usename IS DISTINCT FROM %s AND usename IS DISTINCT FROM %s",
            [ROLE, WEB_ROLE],
        ).fetchone()[0]
        # Leave room for everyone else: their current use and 10 more.
        free = max_conn - reserved - int(in_use) - 10
        jobs_limit = max(5, min(jobs_limit, free // 3))
        web_limit = max(5, min(web_limit, free - jobs_limit))
        for role, limit in ((ROLE, jobs_limit), (WEB_ROLE, web_limit)):
            ident = sql.Identifier(role)
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(ident, limit))
            else:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT {}").format(ident, limit)
                )
        # The web role acts with the owner's privileges (it inherits them).
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(ROLE), sql.Identifier(WEB_ROLE))
        )
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
        if row is not None and row[0] != ROLE:
            raise SystemExit(
                f"database {name} exists but belongs to {row[0]}, not {ROLE}: drop it first"
            )
        # A fresh database each run: the app's migrations may have been edited in place
        # during development, and nothing of a previous run should linger.
        if row is not None:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(ROLE)
            )
        )
    return web_limit, jobs_limit


def service_env(db_name: str, redis_url: str, role: str) -> dict[str, str]:
    """Environment for test settings in services mode (also set in this process)."""
    values = {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TASKSTATE_TEST_SERVICES": "1",
        "TASKSTATE_TEST_DB_NAME": db_name,
        "TASKSTATE_TEST_REDIS_URL": redis_url,
        "PGUSER": role,
    }
    os.environ.update(values)
    from tests.support.processes import child_env

    return child_env(**values)


@dataclass
class Setup:
    env: dict[str, str]  # for a worker: connects as ROLE
    web_env: dict[str, str]  # for uvicorn: connects as WEB_ROLE
    web_limit: int
    jobs_limit: int


def setup_django(db_name: str, redis_url: str, web_limit: int, jobs_limit: int = 20) -> Setup:
    """Create roles and a fresh database, set Django up on them (as ``ROLE``), migrate."""
    web_limit, jobs_limit = ensure_database(db_name, web_limit, jobs_limit)
    web_env = service_env(db_name, redis_url, WEB_ROLE)
    env = service_env(db_name, redis_url, ROLE)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    return Setup(env, web_env, web_limit, jobs_limit)


def db_backends(db_name: str) -> int:
    """Open connections to one database, as the server counts them."""
    with _admin() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [db_name]
        ).fetchone()
    return int(row[0])


def make_users(count: int, base_pk: int) -> list[tuple[int, str]]:
    """``count`` users with explicit pks from ``base_pk`` and a fresh session each.

    Explicit, high pks keep the benchmark's SSE channels apart from those of a test
    suite using the same Redis (pub/sub channels are not per database). Returns
    ``(user pk, sessionid)`` pairs.
    """
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.auth.hashers import make_password
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    user_model = get_user_model()
    pks = list(range(base_pk, base_pk + count))
    existing = set(user_model.objects.filter(pk__in=pks).values_list("pk", flat=True))
    password = make_password("bench-not-secret")
    user_model.objects.bulk_create(
        [
            user_model(pk=pk, username=f"bench{pk}", password=password)
            for pk in pks
            if pk not in existing
        ],
        batch_size=1000,
    )
    Session.objects.all().delete()
    users = {u.pk: u for u in user_model.objects.filter(pk__in=pks)}
    store = SessionStore()
    expire = timezone.now() + timedelta(days=1)
    sessions = []
    out = []
    for pk in pks:
        user = users[pk]
        key = get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789")
        data = {
            SESSION_KEY: str(pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        sessions.append(
            Session(session_key=key, session_data=store.encode(data), expire_date=expire)
        )
        out.append((pk, key))
    Session.objects.bulk_create(sessions, batch_size=1000)
    return out


def clear_tasks() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE taskstate_task")


def pg_counters(db_name: str) -> dict[str, float]:
    """Server-side counters of one database: transactions, tuples read, sessions opened."""
    with _admin() as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched, sessions "
            "FROM pg_stat_database WHERE datname = %s",
            [db_name],
        ).fetchone()
    assert row is not None
    return {
        "xacts": float(row[0]),
        "tup_returned": float(row[1]),
        "tup_fetched": float(row[2]),
        "sessions": float(row[3]),
    }


def run_token() -> str:
    return secrets.token_hex(3)


# --- processes -----------------------------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """Every live process of a process group (a worker forks its own children)."""
    pids = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid:
                pids.append(process.pid)
    return pids


def cpu_seconds(pids: Iterable[int]) -> float:
    """User and system CPU time the live processes ``pids`` have used so far."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def rss_kb(pids: Iterable[int]) -> int:
    """Resident memory of the live processes ``pids``, in KiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss // 1024
    return total


class CpuMeter:
    """CPU use of a process group between start() and stop(), in % of one core."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self._cpu = 0.0
        self._wall = 0.0

    def start(self) -> CpuMeter:
        self._cpu = cpu_seconds(group_pids(self.pgid))
        self._wall = time.monotonic()
        return self

    def stop(self) -> float:
        cpu = cpu_seconds(group_pids(self.pgid)) - self._cpu
        wall = time.monotonic() - self._wall
        return 100.0 * cpu / wall if wall > 0 else 0.0


def load_average() -> str:
    return " ".join(f"{load:.2f}" for load in psutil.getloadavg())


class ClientProcess:
    """The one asyncio client process (``clients.py``): many SSE/HTTP clients, driven by
    JSON commands on its stdin, answering one JSON line each on its stdout."""

    def __init__(self, port: int, users: Sequence[tuple[int, str]], workdir: Path) -> None:
        config = workdir / f"clients-{port}.json"
        config.write_text(json.dumps({"host": "127.0.0.1", "port": port, "users": list(users)}))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "clients.py"), str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._replies: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        self.call({"cmd": "ping"}, timeout=30)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(line)
        self._replies.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))
            del self.stderr[:-50]

    def call(self, command: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"client process: no answer to {command['cmd']} in {timeout}s"
            ) from None
        if line is None:
            raise RuntimeError("client process exited:\n" + "\n".join(self.stderr))
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"client process: {reply['error']}\n" + "\n".join(self.stderr))
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, TimeoutError, RuntimeError, ValueError):
                self.call({"cmd": "quit"}, timeout=15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


# --- figures -------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines)
