"""The demo under Django's runserver, a WSGI server, which cannot stream: the page asks for
its stream once, then backs off and says what the server needs; the log says it once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import INIT_SCRIPT, expect, screenshot
from tests.support.processes import REPO, Process, child_env, free_port

#: What the page's status line says while the server cannot stream.
NEEDS_ASGI = "Live updates need an ASGI server (uvicorn, daphne)."
#: How long the page is watched asking for its stream: htmx's own reconnection asks about
#: twice a second.
WATCH_MS = 10_000


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "example_project" / "manage.py"), *args]


@pytest.fixture(scope="module")
def runserver(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Process]]:
    """Base URL of the demo served by ``manage.py runserver`` (SQLite, no worker), and its
    process (its log)."""
    database: Path = tmp_path_factory.mktemp("wsgi") / "demo.sqlite3"
    env = child_env(DJANGO_SETTINGS_MODULE="demo_site.settings", DEMO_SQLITE_PATH=str(database))
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    subprocess.run(
        _manage("migrate", "--verbosity", "0"), env=env, cwd=REPO, check=True, timeout=120
    )
    create_login = (
        "from django.contrib.auth import get_user_model; "
        "get_user_model().objects.create_user('demo', password='demo')"
    )
    subprocess.run(_manage("shell", "-c", create_login), env=env, cwd=REPO, check=True, timeout=60)
    port = free_port()
    server = Process("runserver", _manage("runserver", "--noreload", f"127.0.0.1:{port}"), env)
    try:
        server.wait_listening(port, timeout=60)
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.stop()


def test_under_runserver_the_page_asks_for_its_stream_once_and_says_what_it_needs(
    browser: Any, runserver: tuple[str, Process]
) -> None:
    base, server = runserver
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(INIT_SCRIPT)
    try:
        page = context.new_page()
        asked: list[str] = []
        page.on("request", lambda r: asked.append(r.url) if "/taskstate/events/" in r.url else None)
        page.goto(f"{base}/accounts/login/")
        page.fill("input[name=username]", "demo")
        page.fill("input[name=password]", "demo")
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        expect(page.locator("#taskstate-heading")).to_be_visible()
        # The window the stream requests are counted in: no event marks "it did not ask".
        page.wait_for_timeout(WATCH_MS)
        assert len(asked) == 1, f"{len(asked)} stream requests in {WATCH_MS} ms"
        indicator = page.locator("[data-taskstate-connection]")
        expect(indicator).to_have_text(NEEDS_ASGI)
        assert page.locator("#taskstate-rows[data-taskstate-stale]").count() == 0
        screenshot(page, "wsgi-needs-asgi")
        # On a phone it wraps within the list rather than running off the screen.
        page.set_viewport_size({"width": 390, "height": 844})
        box = indicator.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        screenshot(page, "wsgi-needs-asgi-phone")
        logged = [line for line in server.lines if "needs an ASGI server" in line]
        assert len(logged) == 1, logged
    finally:
        context.close()
