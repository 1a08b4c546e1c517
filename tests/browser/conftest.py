"""The real example project served by uvicorn, driven by Debian's Chromium.

Without services: the embedded demo (SQLite, in-process worker) in one process. With
TASKSTATE_TEST_SERVICES=1: PostgreSQL, the Redis broker, a separate ``rundramatiq``
worker and ``demo --no-worker`` for the web, as in production.

A machine without /usr/bin/chromium or Playwright skips these tests, saying why; CI
fails instead, so they can never be skipped there.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import REPO, Process, child_env, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = REPO / "test-artifacts"
SERVICES = os.environ.get("TASKSTATE_TEST_SERVICES") == "1"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


#: How long the feed of the demo's django.tasks price import stays down
#: (example_project/demo/actions.py): long enough to see its row fail before a Retry.
DEMO_FEED_DOWN_SECONDS = 30
#: The demo's work at this fraction of its shown pace (example_project/demo/tasks.py):
#: a report of about 6 s instead of 12, still long enough to be seen running, estimated
#: and cancelled on a loaded machine.
DEMO_PACE = 0.5


def _missing_browser() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python Playwright is not installed (pip install -e . --group test)"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    missing = _missing_browser()
    if missing:
        if IN_CI:
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _manage(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "example_project" / "manage.py"), *args]


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the running example project."""
    if _missing_browser():
        pytest.skip("no browser")  # the browser fixture says why, or fails in CI
    processes: list[Process] = []
    env = child_env(
        DJANGO_SETTINGS_MODULE="demo_site.settings",
        DEMO_FEED_DOWN_SECONDS=str(DEMO_FEED_DOWN_SECONDS),
        DEMO_PACE=str(DEMO_PACE),
    )
    db_name = f"taskstate_browser_{os.getpid()}"
    if SERVICES:
        import psycopg

        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db_name}"')
            c.execute(f'CREATE DATABASE "{db_name}"')
        env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{db_name}"
        # Its own Redis database (the broker's queues), apart from the suite's.
        env["REDIS_URL"] = os.environ.get(
            "TASKSTATE_TEST_DEMO_REDIS_URL", "redis://127.0.0.1:6379/13"
        )
    else:
        env["DEMO_SQLITE_PATH"] = str(tmp_path_factory.mktemp("demo") / "demo.sqlite3")
    try:
        # A free port can be taken by another process (CI runs suites side by side)
        # before the demo binds it: then the demo exits saying so, and gets another.
        for attempt in range(3):
            port = free_port()
            web_args = ["demo", "--port", str(port)] + (["--no-worker"] if SERVICES else [])
            web = Process("demo", _manage(*web_args), env)
            processes.append(web)
            try:
                web.wait_for_output("taskstate demo: http://", timeout=90)
                web.wait_listening(port, timeout=60)
                break
            except RuntimeError:
                taken = "in use" in web.output()
                if attempt == 2 or not taken:
                    raise
        if SERVICES:
            worker = Process(
                "rundramatiq", _manage("rundramatiq", "--processes", "1", "--threads", "4"), env
            )
            processes.append(worker)
            worker.wait_for_output("is ready for action", timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        for process in reversed(processes):
            process.stop()
        if SERVICES:
            import psycopg

            with psycopg.connect(
                "host=127.0.0.1 user=postgres dbname=postgres", autocommit=True
            ) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


# Records, in the page, when a task list's stream opened and what its stream did, for
# tests that wait for it and for the message of a failing one.
INIT_SCRIPT = """
window.__taskstateLog = [];
document.addEventListener('stream-open', () => { window.__taskstateOpen = true; });
['htmx:sse:after:connection', 'htmx:sse:error', 'htmx:sse:close', 'stream-open', 'htmx:error']
  .forEach(name => document.addEventListener(name, event => window.__taskstateLog.push(
    [name, Math.round(performance.now()), String(event.detail?.error?.message ?? '')]), true));
"""


def wait_open(page: Any, timeout: float = 30_000) -> None:
    """Wait until the page's task stream has opened; say what it did if it never does."""
    try:
        page.wait_for_function("() => window.__taskstateOpen === true", timeout=timeout)
    except Exception as exc:
        log = page.evaluate("window.__taskstateLog")
        probe = page.evaluate(
            """async () => { const c = new AbortController(); setTimeout(() => c.abort(), 5000);
                 try { const r = await fetch('/taskstate/events/', {signal: c.signal});
                       return 'events answered ' + r.status; }
                 catch (e) { return 'events: ' + e; } }"""
        )
        raise AssertionError(f"the task stream never opened; its events: {log}; {probe}") from exc


@pytest.fixture
def new_page(browser: Any, demo: str) -> Iterator[Any]:
    """Open pages in fresh browser contexts (separate cookies), closed after the test."""
    contexts: list[Any] = []

    def open_page(
        username: str | None = "demo", *, javascript: bool = True, base_url: str = demo
    ) -> Any:
        context = browser.new_context(
            viewport={"width": 1200, "height": 800}, java_script_enabled=javascript
        )
        contexts.append(context)
        # Record when a task list's stream has opened, for tests that must wait for it.
        context.add_init_script(INIT_SCRIPT)
        page = context.new_page()
        # Shown by pytest only when the test fails.
        page.on("console", lambda message: print(f"[{username} console] {message.text}"))
        page.set_default_timeout(30_000)
        if username:
            page.goto(f"{base_url}/accounts/login/")
            page.fill("input[name=username]", username)
            page.fill("input[name=password]", username)
            page.click("button[type=submit], input[type=submit]")
            page.wait_for_url(f"{base_url}/")
        return page

    yield open_page
    for context in contexts:
        context.close()


def expect(actual: Any, message: str | None = None) -> Any:
    """Playwright's ``expect`` (assertions that wait), imported only once a browser runs."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(actual, message)


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}-{'services' if SERVICES else 'embedded'}.png"
    page.screenshot(path=str(path))
    return path


#: The accessibility tests' pages, saved for the docs as axe checked them:
#: ``TASKSTATE_SCREENSHOTS_DIR=docs/screenshots pytest tests/browser -k accessibility``
#: (docs/templates.md, "Screenshots"). Unset, they are kept in test-artifacts/ only.
SCREENSHOTS_DIR = os.environ.get("TASKSTATE_SCREENSHOTS_DIR", "")


def docs_screenshot(page: Any, name: str) -> Path:
    """The whole page as ``name``.png in test-artifacts/, and in SCREENSHOTS_DIR if set."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, animations="disabled", caret="hide")
    if SCREENSHOTS_DIR:
        target = Path(SCREENSHOTS_DIR)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)
    return path


def clean_artifacts() -> None:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
