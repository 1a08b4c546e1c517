"""The task list in a bare page (no site styles): it looks finished and reads the same
as in the demo, with the same words the browser uses."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone, translation

from taskstate.templatetags.taskstate import taskstate_ago
from tests.browser.conftest import INIT_SCRIPT, expect, wait_open

LANGUAGES = {"en": "en", "fr": "fr", "de": "de", "es": "es", "pt_BR": "pt-BR"}


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_moment_ago_reads_as_the_browser_says_it(browser, language):
    """A row drawn by the server and one redrawn by taskstate.js sit side by side: the
    server's word for a time seconds ago is the browser's (Intl, numeric "auto")."""
    page = browser.new_page()
    try:
        browser_word = page.evaluate(
            "lang => new Intl.RelativeTimeFormat(lang, {numeric: 'auto'}).format(0, 'second')",
            LANGUAGES[language],
        )
    finally:
        page.close()
    with translation.override(language):
        server_word = taskstate_ago(timezone.now() - timedelta(seconds=3))
    assert server_word == browser_word


LONG_ERROR = "The supplier feed answered 503 Service Unavailable " + "and said more. " * 12


def _rows(user: Any) -> dict[str, Any]:
    """One row of each kind a newcomer sees in the first hour."""
    from taskstate.core.states import Status
    from tests.support.factories import ago, make_task

    started = ago(40)
    rows = {
        "queued": make_task(user=user, status=Status.ENQUEUED, description="Queued export"),
        "running": make_task(
            user=user,
            status=Status.RUNNING,
            description="Build a report",
            started_at=started,
            progress=40,
            progress_message="Section 5 of 12",
        ),
        "retrying": make_task(
            user=user,
            status=Status.RETRYING,
            description="Flaky import",
            started_at=started,
            attempts=2,
            error_type="FeedUnavailable",
            error_message="503 Service Unavailable",
        ),
        "done": make_task(
            user=user,
            status=Status.DONE,
            description="Quick ping",
            started_at=started,
            finished_at=ago(30),
            result={"url": "/reports/1.csv"},
        ),
        "failed": make_task(
            user=user,
            status=Status.FAILED,
            description="Nightly import",
            started_at=started,
            finished_at=ago(20),
            attempts=3,
            error_type="FeedUnavailable",
            error_message="503 Service Unavailable",
            retry_message={"actor_name": "export", "args": [], "kwargs": {}, "options": {}},
        ),
        "failed-long": make_task(
            user=user,
            status=Status.FAILED,
            description="Import the catalogue",
            started_at=started,
            finished_at=ago(10),
            error_type="FeedUnavailable",
            error_message=LONG_ERROR,
        ),
        "pipeline": make_task(
            user=user,
            status=Status.FAILED,
            description="Pipeline with a failing step",
            started_at=started,
            finished_at=ago(5),
            kind="pipeline",
            children_total=3,
            children_done=1,
            children_failed=1,
            error_type="ValueError",
            error_message="Check them failed: order 17 has no customer",
        ),
    }
    steps = (
        ("Fetch the orders", Status.DONE, ""),
        ("Check them", Status.FAILED, "order 17 has no customer"),
    )
    for position, (description, status, error) in enumerate(steps):
        make_task(
            user=user,
            parent=rows["pipeline"],
            position=position,
            description=description,
            status=status,
            error_type="ValueError" if error else "",
            error_message=error,
        )
    return rows


def test_the_bare_page_of_the_accessibility_checks_renders_every_row(db, client, django_user_model):
    """The rows the browser tests look at, as the server renders them. Its ``db`` also
    has pytest-django create the test database when this module runs on its own, or with
    ``-k accessibility`` (docs/templates.md): the browser tests below read through
    ``django_db_setup`` only, which sets up the databases of the selected tests' ``db``."""
    user = django_user_model.objects.create_user("newcomer", password="pw")
    rows = _rows(user)
    client.force_login(user)
    page = client.get("/bare/").content.decode()
    for task in rows.values():
        assert f'id="taskstate-task-{task.pk}"' in page


# Notes when the rows' resync (asked for by each stream that opens) has been swapped in.
RESYNC_SCRIPT = """
document.addEventListener('htmx:after:swap', event => {
  if (event.target && event.target.id === 'taskstate-rows') window.__taskstateResynced = true;
});
"""


@pytest.fixture
def bare_page(browser: Any, client: Any, django_db_setup: None, django_db_blocker: Any) -> Any:
    """Opens the bare page (tests/urls.py) of ``user``'s rows, rendered by the test client
    and served, with the app's static files and a live (quiet) event stream, by a small
    HTTP server in a thread; returns once the stream is open and the rows resynced.

    Everything is read before the browser asks: a request's handler never queries (it runs
    in another thread, outside this test's transaction). Playwright's own request routing
    is not used: its handlers run inside Playwright's event loop, and a sync call made
    there left that loop marked running in this thread, which Django then took for async
    code in every later test.
    """
    import mimetypes
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from django.contrib.auth import get_user_model
    from django.db import transaction

    from tests.support.processes import REPO

    # Not pytest-django's ``db``: it would move these tests before the browser-less ones,
    # and the event loop sync Playwright leaves marked running in this thread would then
    # make Django refuse every later test's queries. The rows live in a transaction that
    # is rolled back once the pages are read; the loop is marked running here already.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with django_db_blocker.unblock(), transaction.atomic():
            user = get_user_model().objects.create_user("newcomer", password="pw")
            rows = _rows(user)
            client.force_login(user)
            pages = {
                "/": client.get("/bare/").content,
                # The resync a newly opened stream asks for: the same rows.
                "/taskstate/list/": client.get("/taskstate/list/", HTTP_HX_REQUEST="true").content,
            }
            for task in rows.values():
                if task.kind:
                    path = f"/taskstate/children/{task.pk}/"
                    pages[path] = client.get(path, HTTP_HX_REQUEST="true").content
            transaction.set_rollback(True)
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
    static = REPO / "taskstate" / "static"
    closing = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def _stream(self) -> None:
            """An event stream that opens, as taskstate's does, then only keeps alive:
            the list is live (not "Reconnecting…") and nothing changes under the test."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            try:
                self.wfile.write(b"event: stream-open\ndata: {}\n\n")
                self.wfile.flush()
                while not closing.wait(1):
                    self.wfile.write(b":\n\n")
                    self.wfile.flush()
            except OSError:
                pass  # the page went away

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/taskstate/events/":
                self._stream()
                return
            body, kind = pages.get(path), "text/html; charset=utf-8"
            if body is None and path.startswith("/static/"):
                file = static / path.removeprefix("/static/")
                if file.is_file():
                    body = file.read_bytes()
                    kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    contexts: list[Any] = []

    def open_page(**options: Any) -> Any:
        context = browser.new_context(**{"viewport": {"width": 1280, "height": 900}, **options})
        contexts.append(context)
        context.add_init_script(INIT_SCRIPT + RESYNC_SCRIPT)
        page = context.new_page()
        page.goto(f"{base}/")
        wait_open(page)
        # The resync the opened stream asked for has been swapped in.
        page.wait_for_function("() => window.__taskstateResynced === true")
        page.rows = {name: f"#taskstate-task-{task.pk}" for name, task in rows.items()}
        return page

    yield open_page
    closing.set()
    for context in contexts:
        context.close()
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_the_list_keeps_its_own_font_in_a_serif_page(bare_page):
    page = bare_page()
    body, listing = page.evaluate(
        """() => [getComputedStyle(document.body).fontFamily,
                  getComputedStyle(document.querySelector('.taskstate')).fontFamily]"""
    )
    assert "serif" in body.lower() or "times" in body.lower(), body
    assert "sans-serif" in listing or "system-ui" in listing, listing


def _height(page: Any, selector: str) -> float:
    return page.locator(selector).first.bounding_box()["height"]


def test_open_retry_and_dismiss_are_one_height_and_44_px_on_a_touch_screen(bare_page):
    page = bare_page()
    done, failed = page.rows["done"], page.rows["failed"]
    heights = {
        _height(page, f"{done} .taskstate-open"),
        _height(page, f"{done} .taskstate-dismiss button"),
        _height(page, f"{failed} .taskstate-retry button"),
    }
    assert len(heights) == 1, heights
    phone = bare_page(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    assert phone.evaluate("matchMedia('(pointer: coarse)').matches")
    for selector in (
        f"{done} .taskstate-open",
        f"{done} .taskstate-dismiss button",
        f"{failed} .taskstate-retry button",
    ):
        assert _height(phone, selector) >= 44, selector


def test_retry_is_the_primary_action_apart_from_dismiss(bare_page):
    page = bare_page()
    failed = page.rows["failed"]
    retry = page.locator(f"{failed} .taskstate-retry button")
    dismiss = page.locator(f"{failed} .taskstate-dismiss button")
    gap = dismiss.bounding_box()["x"] - (retry.bounding_box()["x"] + retry.bounding_box()["width"])
    assert gap >= 8, gap
    looks = page.evaluate(
        """([a, b]) => [a, b].map(s => getComputedStyle(document.querySelector(s)).backgroundColor)""",
        [f"{failed} .taskstate-retry button", f"{failed} .taskstate-dismiss button"],
    )
    assert looks[0] != looks[1], looks


def test_every_row_has_its_status_word_name_meta_and_actions_in_the_same_places(bare_page):
    page = bare_page()
    for name, row in page.rows.items():
        anatomy = page.evaluate(
            """row => [...document.querySelector(row + ' > .taskstate-task-head').children]
                     .map(e => e.className.split(' ')[0])""",
            row,
        )
        assert anatomy[:2] == ["taskstate-badge", "taskstate-description"], (name, anatomy)
        metas = page.locator(f"{row} .taskstate-meta")
        if name != "queued":
            assert anatomy[2] == "taskstate-meta", (name, anatomy)
            assert metas.count() == 1, name
        word = page.locator(f"{row} .taskstate-status-text").bounding_box()
        assert word["width"] > 8, name  # the word is seen, not only read out


def test_a_failed_pipeline_says_its_error_once(bare_page):
    page = bare_page()
    pipeline = page.rows["pipeline"]
    page.click(f"{pipeline} .taskstate-error-detail summary")
    text = page.locator(pipeline).inner_text()
    assert text.count("order 17 has no customer") == 1, text
    # Its steps opened, the failed step says it.
    page.click(f"{pipeline} .taskstate-children-toggle")
    expect(page.locator(f"{pipeline} li.taskstate-child")).to_have_count(2)
    text = page.locator(pipeline).inner_text()
    assert text.count("order 17 has no customer") == 1, text


def test_an_error_reads_whole_on_demand(bare_page):
    page = bare_page(viewport={"width": 390, "height": 844})
    for name, message in (("failed", "503 Service Unavailable"), ("failed-long", LONG_ERROR)):
        row = page.rows[name]
        page.click(f"{row} .taskstate-error-detail summary")
        shown = page.locator(f"{row} .taskstate-error-detail").inner_text()
        assert " ".join(message.split()) in " ".join(shown.split()), (name, shown)
        cut = page.evaluate(
            """row => [...document.querySelectorAll(row + ' .taskstate-error-detail *')]
                     .some(e => e.offsetParent && e.scrollWidth > e.clientWidth + 1)""",
            row,
        )
        assert not cut, name


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", [1280, 390])
def test_the_bare_list_has_no_accessibility_violations(bare_page, scheme, width):
    from axe_playwright_python.sync_playwright import Axe

    from tests.browser.conftest import docs_screenshot
    from tests.browser.test_list_ui import AXE_OPTIONS

    phone = {"is_mobile": True, "has_touch": True} if width < 600 else {}
    page = bare_page(
        viewport={"width": width, "height": 1000},
        color_scheme=scheme,
        reduced_motion="reduce",
        **phone,
    )
    page.click(f"{page.rows['failed']} .taskstate-error-detail summary")
    page.mouse.move(0, 0)
    page.evaluate("document.activeElement?.blur()")
    results = Axe().run(page, options=AXE_OPTIONS)
    assert results.violations_count == 0, results.generate_report()
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    docs_screenshot(page, f"list-bare-{scheme}-{width}")


_NO_DOTS = ".taskstate-part::before, .taskstate-part::after { content: none !important; }"


def _meta_wraps_without_a_stray_dot(page: Any, meta: str) -> bool:
    """Whether ``meta``'s parts are on two lines, the dot between them nowhere seen."""
    tops = page.evaluate(
        "meta => [...document.querySelectorAll(meta + ' > .taskstate-part')]"
        ".map(p => Math.round(p.getBoundingClientRect().top))",
        meta,
    )
    assert len(tops) == 2, tops
    shown = _around(page, meta)
    page.add_style_tag(content=_NO_DOTS)
    return tops[1] > tops[0] and _around(page, meta) == shown


def _around(page: Any, selector: str) -> bytes:
    """A picture of ``selector`` and 1em either side: a dot past its edges shows too."""
    box = page.locator(selector).bounding_box()
    clip = {"x": box["x"] - 16, "y": box["y"], "width": box["width"] + 32, "height": box["height"]}
    return page.screenshot(clip=clip, animations="disabled")


@pytest.mark.parametrize("width", [1280, 390])
def test_a_wrapping_time_leaves_no_dot_at_a_line_end_or_start(bare_page, width):
    phone = {"is_mobile": True, "has_touch": True} if width < 600 else {}
    page = bare_page(viewport={"width": width, "height": 1000}, **phone)
    meta = f"{page.rows['failed']} > .taskstate-task-head > .taskstate-meta"
    if width > 600:
        # On one line, the dot is there between "failed after 3 attempts" and the time.
        shown = _around(page, meta)
        page.add_style_tag(content=_NO_DOTS)
        assert _around(page, meta) != shown
        page.reload()
        # The resync the reopened stream asks for swaps the rows in: read them after it.
        wait_open(page)
        page.wait_for_function("() => window.__taskstateResynced === true")
        # A list too narrow for the whole time beside the buttons (right-aligned, it wraps).
        page.add_style_tag(content=".taskstate { width: 32rem; }")
    # On a phone it stands under the name, left-aligned, and wraps there.
    assert _meta_wraps_without_a_stray_dot(page, meta)
