"""The tutorial (docs/tutorial.md), followed word for word in a new project.

``django-admin startproject`` and ``startapp``, then the tutorial's marked code blocks pasted
where it says; the test's only additions are a PostgreSQL database of its own (the
tutorial leaves the database to the project) and its own Redis db number. The project
then runs under uvicorn with the tutorial's command line and a real ``rundramatiq``
worker, and Chromium sees a row go live. Ctrl+C stops uvicorn with the page still open.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest

from tests.support.processes import Process, child_env, free_port
from tests.support.quickstart import TUTORIAL, commands, quickstart_blocks

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("TASKSTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CHROMIUM = "/usr/bin/chromium"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def database() -> Iterator[str]:
    import psycopg

    name = f"taskstate_quickstart_{os.getpid()}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def project(tmp_path: Path, database: str) -> tuple[Path, dict[str, str]]:
    blocks = quickstart_blocks()
    assert set(blocks) >= {"install", "settings", "urls", "tasks", "views", "template", "run"}
    env = child_env(DJANGO_SETTINGS_MODULE="mysite.settings")
    env.pop("TASKSTATE_TEST_SERVICES", None)
    env.pop("TASKSTATE_TEST_DB_NAME", None)
    # The install line names this project's extras (it is installed here already).
    (install,) = commands(blocks["install"])
    assert install[:2] == ["pip", "install"] and "dramatiq-taskstate[quickstart]" in install[2]

    django_admin = [sys.executable, "-m", "django"]
    _run([*django_admin, "startproject", "mysite", "."], tmp_path, env)
    _run([sys.executable, "manage.py", "startapp", "orders"], tmp_path, env)

    # The tutorial's Redis is 127.0.0.1:6379 db 0; the test's, REDIS_URL.
    redis = urlsplit(REDIS_URL)
    redis_db = redis.path.lstrip("/") or "0"
    settings = blocks["settings"].replace("127.0.0.1:6379/0", f"{redis.netloc}/{redis_db}")
    settings = settings.replace('"port": 6379', f'"port": {redis.port or 6379}')
    settings = settings.replace('"db": 0', f'"db": {redis_db}')
    assert settings.count(redis.netloc) == 2 and f'"db": {redis_db}' in settings
    own_db = (
        "\n# The test's own database (the tutorial leaves it to the project).\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', "
        f"'NAME': {database!r}, 'USER': 'postgres', 'HOST': '127.0.0.1'}}}}\n"
    )
    with (tmp_path / "mysite" / "settings.py").open("a") as f:
        f.write("\n" + settings + own_db)
    with (tmp_path / "mysite" / "urls.py").open("a") as f:
        f.write("\n" + blocks["urls"])
    (tmp_path / "orders" / "tasks.py").write_text(blocks["tasks"])
    (tmp_path / "orders" / "views.py").write_text(blocks["views"])
    templates = tmp_path / "orders" / "templates" / "orders"
    templates.mkdir(parents=True)
    (templates / "index.html").write_text(blocks["template"])
    return tmp_path, env


def test_quickstart_verbatim_goes_live_under_uvicorn(project: Any, browser: Any) -> None:
    root, env = project
    blocks = quickstart_blocks()
    run = commands(blocks["run"])
    assert [c[:3] for c in run[:3]] == [
        ["python", "manage.py", "migrate"],
        ["python", "manage.py", "createsuperuser"],
        ["python", "manage.py", "rundramatiq"],
    ]
    assert run[3][0] == "uvicorn"
    # The tutorial names the address to open after these.
    said = re.search(
        r"^Open <?(http://127\.0\.0\.1:8000/[^\s>]*)", TUTORIAL.read_text(encoding="utf-8"), re.M
    )
    assert said is not None
    open_url = said.group(1).rstrip(",.")
    assert open_url == "http://127.0.0.1:8000/", "the list's own address, not a login page's"

    check = _run([sys.executable, "manage.py", "check"], root, env)
    assert "no issues" in check, check
    _run([sys.executable, *run[0][1:]], root, env)
    _run(
        [
            sys.executable,
            *run[1][1:],
            "--noinput",
            "--username",
            "ada",
            "--email",
            "ada@example.com",
        ],
        root,
        {**env, "DJANGO_SUPERUSER_PASSWORD": "ada-password"},
    )
    port = free_port()
    worker = Process(
        "rundramatiq",
        [sys.executable, *run[2][1:], "--processes", "1", "--threads", "2"],
        env,
        cwd=root,
    )
    server = Process(
        "uvicorn",
        [sys.executable, "-m", *run[3], "--port", str(port)],
        {**env, "PYTHONPATH": os.pathsep.join([str(root), env["PYTHONPATH"]])},
        cwd=root,
    )
    try:
        worker.wait_for_output("is ready for action", timeout=60)
        server.wait_for_output("Uvicorn running on", timeout=60)
        base = f"http://127.0.0.1:{port}"
        with urlopen(f"{base}/static/taskstate/vendor/htmx.min.js", timeout=10) as r:
            assert r.status == 200

        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(40_000)
        # The address the tutorial says to open leads to a login page that exists in a
        # fresh project, and back to the list once logged in.
        opened = page.goto(base + open_url.removeprefix("http://127.0.0.1:8000"))
        assert opened is not None and opened.ok, opened and opened.url
        page.fill("input[name=username]", "ada")
        page.fill("input[name=password]", "ada-password")
        page.click("input[type=submit]")
        page.wait_for_url(f"{base}/")
        page.click("button:has-text('Export November')")
        page.wait_for_selector("li.taskstate-task[data-status='running']")
        page.wait_for_selector("li.taskstate-task[data-status='done']")
        assert "Orders of November" in page.text_content("li.taskstate-task")
        # The finished row's "Open" link resolves: the export the actor wrote.
        href = page.get_attribute("li.taskstate-task a.taskstate-open", "href")
        assert href == "/exports/2026-11.csv"
        export = context.request.get(base + href)
        assert export.status == 200, export.status
        assert export.headers["content-type"].startswith("text/csv")
        lines = export.text().splitlines()
        assert lines[0] == "day,orders" and lines[-1].startswith("2026-11-30,"), lines
        assert len(lines) == 31
        assert context.request.get(f"{base}/exports/1999-01.csv").status == 404
        # Still on the page, its stream open: Ctrl+C stops the server all the same.
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(timeout=20)
        context.close()
    finally:
        server.stop()
        worker.stop()
    # Dramatiq says nothing about the returned value: neither "no Results middleware"
    # nor "store_results not set" (Dramatiq 2.x).
    assert "returned a value" not in worker.output(), worker.output()
    assert "store_results" not in worker.output(), worker.output()
    assert "Traceback" not in worker.output(), worker.output()
