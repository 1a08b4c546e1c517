"""Two sites on one Redis server: each its own database, SECRET_KEY and Redis db number.

Redis pub/sub ignores db numbers and django-eventstream publishes every event on one
fixed pub/sub channel, so each web process hears the other site's events too. Only the
channel names keep them apart: the same user pk on both sites must never see a row of
the other site.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.conf import settings
from django.db import connection, connections

from tests.support.processes import Process, free_port, start_uvicorn, start_worker
from tests.support.sse import SSEClient, session_cookie
from tests.testapp import tasks as actors

EVENTS = "/taskstate/events/"


def other_redis_db(url: str) -> str:
    parts = urlsplit(url)
    db = int(parts.path.lstrip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(db + 1) % 16}"))


def admin_connection() -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres", autocommit=True
    )


@dataclass
class Site:
    base: str
    env: dict[str, str]
    processes: list[Process]

    def run(self, code: str) -> str:
        """Run ``code`` after django.setup() with this site's settings; its output."""
        proc = Process(
            "site", [sys.executable, "-c", f"import django; django.setup(); {code}"], self.env
        )
        assert proc.proc.wait(60) == 0, proc.output()
        proc.stop()
        return proc.output()

    def session_cookie(self, user_pk: int) -> dict[str, str]:
        """A session of user ``user_pk`` on this site (its database, its SECRET_KEY)."""
        out = self.run(
            "from django.contrib.auth import get_user_model; from tests.support.sse import session_cookie; "
            f"print('COOKIE', session_cookie(get_user_model().objects.get(pk={user_pk}))['sessionid'])"
        )
        return {"sessionid": out.split("COOKIE ")[-1].split()[0]}

    def send(self, user_pk: int, description: str) -> None:
        """Enqueue a tracked task as this site's code would (its settings, its broker)."""
        self.run(
            "from tests.testapp import tasks; from tests.support.drain import flush; "
            f"tasks.noop.send(for_state={{'user_pk': {user_pk}, 'description': {description!r}}}); "
            "flush()"
        )


def start_site(env: dict[str, str]) -> Site:
    processes: list[Process] = []
    try:
        port = free_port()
        processes.append(start_uvicorn("tests.asgi:application", env, port))
        processes.append(start_worker(env, threads=2))
    except BaseException:
        for proc in processes:
            proc.stop()
        raise
    return Site(f"http://127.0.0.1:{port}", env, processes)


@pytest.fixture
def two_sites(process_env, broker, own_processes, user) -> Iterator[tuple[Site, Site]]:
    """Site A: the test database and settings. Site B: a copy of that database (so the
    same user and pk exist there), another SECRET_KEY, the next Redis db number."""
    # The copy must be taken while nothing else is connected to the test database.
    site_b_db = f"{connection.settings_dict['NAME']}_site_b"
    template = connection.settings_dict["NAME"]
    connections.close_all()
    with admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{site_b_db}" TEMPLATE "{template}"')
    redis_url = os.environ.get("TASKSTATE_TEST_REDIS_URL", settings.REDIS_URL)
    env_a = {**process_env, "TASKSTATE_TEST_REDIS_URL": redis_url}
    env_b = {
        **process_env,
        "TASKSTATE_TEST_DB_NAME": site_b_db,
        "TASKSTATE_TEST_SECRET_KEY": "site-b-has-a-secret-key-of-its-own-long-enough",
        "TASKSTATE_TEST_REDIS_URL": other_redis_db(redis_url),
    }
    sites: list[Site] = []
    try:
        sites.append(start_site(env_a))
        sites.append(start_site(env_b))
        yield sites[0], sites[1]
    finally:
        for site in sites:
            for proc in site.processes:
                proc.stop()
                print(f"--- {proc.name} ---\n{proc.output()}")
        with admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{site_b_db}" WITH (FORCE)')


@pytest.mark.parametrize(
    ("events", "done"),
    [(EVENTS, 'data-status="done"'), ("/taskstate/json/events/", '"status":"done"')],
    ids=["html", "json"],
)
def test_two_sites_on_one_redis_never_see_each_others_rows(two_sites, user, events, done):
    site_a, site_b = two_sites
    on_a = SSEClient(f"{site_a.base}{events}", cookies=session_cookie(user))
    on_b = SSEClient(f"{site_b.base}{events}", cookies=site_b.session_cookie(user.pk))
    try:
        assert on_a.status == 200 and on_b.status == 200
        on_a.wait_for(lambda f: f.event == "stream-open")
        on_b.wait_for(lambda f: f.event == "stream-open")

        # B's task for its user `pk`; A listens for its own user `pk`.
        site_b.send(user.pk, "SECRET payroll export of SITE B")
        on_b.wait_for(lambda f: "SITE B" in f.data and done in f.data)
        # A's own task after B's: A's process hears both on the one pub/sub connection,
        # in order, so once A's row arrived B's had its chance to cross.
        actors.noop.send(for_state={"user_pk": user.pk, "description": "report of SITE A"})
        on_a.wait_for(lambda f: "SITE A" in f.data and done in f.data)
        # And the other way round: a last row of B after A's.
        site_b.send(user.pk, "closing row of SITE B")
        on_b.wait_for(lambda f: "closing row" in f.data and done in f.data)

        assert not [f for f in on_a.frames if "SITE B" in f.data]
        assert not [f for f in on_b.frames if "SITE A" in f.data]
    finally:
        on_a.close()
        on_b.close()
