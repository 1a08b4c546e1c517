"""GRIP mode: Pushpin holds the event streams in front of two uvicorn processes.

Browser -> Pushpin -> uvicorn (two processes, tried in order); the ``rundramatiq``
worker, and this test process when it enqueues, publish to Pushpin's control port.
Django answers the request that opens a stream (authentication, the user's own channel)
and from then on Pushpin owns the connection.

Pushpin also refreshes each held stream: it GETs the ``Grip-Link: rel=next`` that
django-eventstream set, without the browser's cookies, every 120 s (Pushpin 1.36 also
about a second after some streams open). While that request fails, Pushpin holds back
everything published to the stream, and after five failures it closes the stream.
``taskstate:events`` answers it when Pushpin's signature is verified (docs/pushpin.md,
"Refreshing a held stream"); the tests that need a stream to outlive that refresh call
``stack.require_next_link(user)`` first, which fails with ``NextLinkRefused`` saying so
if the view refuses it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import jwt
import pytest
from django.db import connections
from django.test import Client

from taskstate.core.models import Status, Task
from taskstate.web.channels import user_channel
from tests.support.drain import flush
from tests.support.processes import Process, Shared, free_port, start_uvicorn, start_worker
from tests.support.pushpin import SIG_ISS, PushpinProcess, grip_last, start_pushpin
from tests.support.sse import Frame, assert_each_hears_only_their_own, session_cookie
from tests.testapp import tasks as actors

# On a machine without Pushpin these are skipped, saying why; CI installs it (.ci/run)
# and fails rather than skip.
if shutil.which("pushpin") is None and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    raise RuntimeError("Pushpin is missing in CI: .ci/run installs Debian's pushpin")
pytestmark = pytest.mark.skipif(
    shutil.which("pushpin") is None, reason="needs Pushpin (Debian: apt-get install pushpin)"
)

CHROMIUM = "/usr/bin/chromium"
EVENTS = "/taskstate/events/"
T = TypeVar("T")


@dataclass
class Hold:
    """What Pushpin keeps of a GRIP hold to refresh it: the next link, and the Grip-Last
    header it sends with it (the hold's channels that carry a prev-id)."""

    link: str
    last: str

    @classmethod
    def of(cls, response: http.client.HTTPResponse) -> Hold:
        match = re.match(r"<([^>]+)>; rel=next", response.getheader("Grip-Link", ""))
        assert match and "es-meta=" in match.group(1)
        return cls(match.group(1), grip_last(response.getheader("Grip-Channel", "")))


class NextLinkRefused(AssertionError):
    """taskstate:events refused the request Pushpin makes to refresh a held stream."""


NEXT_LINK_REFUSED = (
    "taskstate:events refused Pushpin's cookie-less next-link request, so Pushpin would "
    "hold back a stream's events from its first refresh on (docs/pushpin.md)"
)


@dataclass
class Stack:
    pushpin: PushpinProcess
    url: str  # where clients connect: Pushpin's HTTP port
    grip_url: str  # GRIP_URL of every Django process
    web_ports: list[int]
    web: list[Process] = field(default_factory=list)
    worker: Process | None = None

    def lines(self) -> list[str]:
        return list(self.pushpin.lines)

    def wait_lines(self, pattern: str, count: int = 1, timeout: float = 10) -> list[str]:
        """The first ``count`` log lines of Pushpin matching ``pattern``, once there."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines() if regex.search(line)]
            if len(found) >= count:
                return found[:count]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"pushpin logged {len(found)} of {count} lines matching {pattern!r}:\n"
                    + self.pushpin.output()
                )
            time.sleep(0.05)

    def served_by(self, path: str, count: int) -> list[int]:
        """Backends Pushpin sent the first ``count`` client requests for ``path`` to.

        Pushpin logs "-> host:port code=403" when it relays a response and "-> host:port
        accept" when the response was a GRIP hold that it keeps open.
        """
        lines = self.wait_lines(rf"\[proxy\] GET http://[^/ ]+{re.escape(path)}[? ]", count)
        return [int(re.findall(r" -> 127\.0\.0\.1:(\d+) ", line)[0]) for line in lines]

    def held(self, channel: str, count: int = 1) -> int:
        """Wait until Pushpin subscribed ``count`` connections to django-eventstream's
        ``channel``; how many it has subscribed to it."""
        pattern = rf"\[handler\] subscribe \S+ channel=events-{re.escape(channel)}$"
        self.wait_lines(pattern, count)
        return len([line for line in self.lines() if re.search(pattern, line)])

    def stop_web(self) -> None:
        for server in self.web:
            server.stop()

    def open_hold(self, user, path: str = EVENTS) -> Hold:
        """Open a stream of ``user`` straight on uvicorn as Pushpin does (the browser's
        cookies, Pushpin's signature); the hold's next link and its Grip-Last."""
        cookie = "; ".join(f"{k}={v}" for k, v in session_cookie(user).items())
        opened = _get(self.web_ports[0], path, {"Grip-Sig": self.grip_sig(), "Cookie": cookie})
        assert opened.status == 200 and opened.getheader("Grip-Hold") == "stream"
        return Hold.of(opened)

    def follow(self, hold: Hold) -> tuple[http.client.HTTPResponse, Hold | None]:
        """Replay, straight to uvicorn, what Pushpin does to refresh a held stream: GET
        the hold's next link, signed with Pushpin's key, with the Grip-Last of the hold's
        channels, without cookies. The response and, if it is a hold, its next link."""
        headers = {"Grip-Sig": self.grip_sig()}
        if hold.last:
            headers["Grip-Last"] = hold.last
        response = _get(self.web_ports[0], hold.link, headers)
        held = response.status == 200 and response.getheader("Grip-Hold") == "stream"
        return response, Hold.of(response) if held else None

    def refresh(self, user) -> tuple[http.client.HTTPResponse, str]:
        """Open a hold of ``user`` and refresh it once as Pushpin does; that response
        and the link it used."""
        hold = self.open_hold(user)
        response, _ = self.follow(hold)
        return response, hold.link

    def grip_sig(self) -> str:
        claim = {"iss": SIG_ISS, "exp": int(time.time()) + 300}
        return jwt.encode(claim, self.pushpin.sig_key, algorithm="HS256")

    def require_next_link(self, user) -> None:
        """Django must answer Pushpin's refresh of a stream, or the stream goes quiet."""
        response, _ = self.refresh(user)
        assert response.status == 200, f"{NEXT_LINK_REFUSED} (refresh answered {response.status})"

    def settle(self, streams: int, since: float, timeout: float = 3, quiet: float = 1.0) -> None:
        """Wait until Pushpin refreshed ``streams`` streams and then made no refresh for
        ``quiet`` seconds, or ``timeout`` seconds after ``since``; every refresh so far
        must have worked. Call it before stopping Django: a refresh that fails holds back
        the stream's events.

        Each stream's next link is its own (it names the stream's session reference),
        so Pushpin refreshes streams one by one, and one may be refreshed twice in a
        row right after it opened: a fixed count is not enough, wait for quiet too.
        """
        pattern = re.compile(r"\[handler\] GET \S+[?&]link=next\S* ")
        seen, last_change = 0, time.monotonic()
        while True:
            done = [line for line in self.lines() if pattern.search(line)]
            now = time.monotonic()
            if len(done) != seen:
                seen, last_change = len(done), now
            if now > since + timeout + quiet:
                break
            if len(done) >= streams and now - last_change >= quiet:
                break
            time.sleep(0.05)
        failed = [line for line in done if line.rstrip().endswith(" error")]
        if failed:
            raise NextLinkRefused("Pushpin could not refresh a stream:\n" + "\n".join(failed))


def statuses(frames: list[Frame], marker: str) -> set[str]:
    """The row statuses seen in frames that mention ``marker``."""
    return {
        s for f in frames if marker in f.data for s in re.findall(r'data-status="(\w+)"', f.data)
    }


@contextlib.contextmanager
def publishing_to(grip_url: str, settings, monkeypatch) -> Iterator[None]:
    """Make this test process publish to Pushpin as well: it enqueues, so it publishes
    the ``enqueued`` row. django_grip builds its publisher once from the settings, so the
    cached one is dropped and rebuilt from the overridden GRIP_URL."""
    import django_grip  # type: ignore[import-untyped]

    settings.GRIP_URL = grip_url
    monkeypatch.setattr(django_grip, "_pubcontrol", None)
    try:
        yield
    finally:
        # Let taskstate's courier hand over, and the publisher deliver, what is queued.
        flush()
        django_grip.get_pubcontrol().finish()


@pytest.fixture(scope="module")
def module_stack(module_env) -> Iterator[tuple[Stack, list[Shared], Shared]]:
    """Pushpin, its two uvicorn targets and a worker, shared by the module's tests
    (tests/integration/conftest.py says how)."""
    web_ports = [free_port(), free_port()]
    pushpin, url, grip_url = start_pushpin(web_ports)
    env = {**module_env, "TASKSTATE_TEST_GRIP_URL": grip_url}
    web = [Shared(partial(start_uvicorn, "tests.asgi:application", env, p)) for p in web_ports]
    worker = Shared(partial(start_worker, env))
    try:
        yield Stack(pushpin=pushpin, url=url, grip_url=grip_url, web_ports=web_ports), web, worker
    finally:
        worker.stop()
        for shared in web:
            shared.stop()
        pushpin.stop()


@pytest.fixture
def stack(module_stack, process_env, broker, settings, monkeypatch) -> Iterator[Stack]:
    s, web, worker = module_stack
    assert s.pushpin.proc.poll() is None, f"pushpin exited:\n{s.pushpin.output()}"
    s.pushpin.forget_output()
    s.web = [shared.get() for shared in web]
    s.worker = worker.get()
    try:
        with publishing_to(s.grip_url, settings, monkeypatch):
            yield s
    finally:
        worker.stop_unless_idle(broker)
        # Shown by pytest only when the test failed.
        for proc in [s.pushpin, *s.web, s.worker]:
            print(f"--- {proc.name} ---\n{proc.output()}")


def test_anonymous_through_pushpin_is_forbidden(stack, streams):
    assert streams(f"{stack.url}{EVENTS}").status == 403
    assert stack.served_by(EVENTS, 1) == [stack.web_ports[0]]


def test_stream_through_pushpin_gets_every_change_published_by_the_worker(stack, streams, user):
    stack.require_next_link(user)
    stream = streams(f"{stack.url}{EVENTS}", user)
    assert stream.status == 200
    stream.wait_for(lambda f: f.event == "stream-open")
    # Django answered with a GRIP hold; Pushpin keeps the connection on the user's channel.
    assert stack.held(user_channel(user.pk)) == 1
    # Paced, so each state is committed in a batch of its own: the background writer
    # merges a quick task's running into its end (docs/reliability.md).
    message = actors.paced.send(
        3, 0.1, for_state={"user_pk": user.pk, "description": "via pushpin"}
    )
    done = stream.wait_for(lambda f: "via pushpin" in f.data and 'data-status="done"' in f.data)
    task = Task.objects.get(message_id=message.message_id)
    assert done.event == "" and f'id="taskstate-task-{task.pk}"' in done.data
    assert {"enqueued", "running", "done"} <= statuses(stream.frames, "via pushpin")


def test_streams_stay_open_when_every_web_process_is_gone(stack, streams, user):
    stack.require_next_link(user)
    first_port, second_port = stack.web_ports
    first = streams(f"{stack.url}{EVENTS}", user)
    first.wait_for(lambda f: f.event == "stream-open")
    # Pushpin tries its targets in order: with the first one gone, the second answers.
    stack.web[0].stop()
    second = streams(f"{stack.url}{EVENTS}", user)
    second.wait_for(lambda f: f.event == "stream-open")
    assert stack.served_by(EVENTS, 2) == [first_port, second_port]
    stack.settle(streams=2, since=time.monotonic())
    stack.web[1].stop()
    # No Django left to answer a new request ...
    assert streams(f"{stack.url}{EVENTS}", user).status == 502
    # ... yet the open streams get what the worker publishes to Pushpin.
    # Long enough for its running row to be committed before its end (not merged).
    actors.sleeps.send(0.3, for_state={"user_pk": user.pk, "description": "no web left"})
    for stream in (first, second):
        stream.wait_for(lambda f: "no web left" in f.data and 'data-status="done"' in f.data)
        assert {"enqueued", "running", "done"} <= statuses(stream.frames, "no web left")


def test_asking_for_another_users_channel_through_pushpin_gets_only_your_own(
    stack, streams, user, other_user
):
    stack.require_next_link(user)
    victim = user_channel(user.pk)
    snoop = streams(f"{stack.url}{EVENTS}?channel={victim}&channels={victim}", other_user)
    mine = streams(f"{stack.url}{EVENTS}", user)
    snoop.wait_for(lambda f: f.event == "stream-open")
    mine.wait_for(lambda f: f.event == "stream-open")
    # Each got a hold on their own channel only.
    assert stack.held(user_channel(other_user.pk)) == 1 and stack.held(victim) == 1
    assert_each_hears_only_their_own(mine, snoop, actors.noop.send, user, other_user)


def _get(port: int, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    """One GET; the body is read unless Django streams it itself (only headers matter)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Accept": "text/event-stream", **headers})
        response = conn.getresponse()
        if response.status != 200 or response.getheader("Grip-Hold"):
            response.read()
        return response
    finally:
        conn.close()


def test_the_next_link_pushpin_follows_is_answered_without_cookies(stack, user):
    """Pushpin refreshes held streams through django-eventstream's signed "next" link."""
    response, link = stack.refresh(user)
    if response.status != 200:
        raise NextLinkRefused(f"GET {link.split('?')[0]}?link=next&... -> {response.status}")
    assert response.getheader("Grip-Hold") == "stream"
    assert f"events-{user_channel(user.pk)}" in response.getheader("Grip-Channel", "")
    # uvicorn logged the refresh, without its tokens (taskstate.logfilters).
    token = re.search(r"es-meta=([^&]+)", link).group(1)
    # Stopped, it has logged every request it answered, this one too (a shared process:
    # a line already there may be Pushpin's refresh of an earlier test's stream).
    stack.web[0].stop()
    logged = [line for line in stack.web[0].lines if "link=next" in line]
    assert logged and all("es-meta=[redacted]" in line for line in logged)
    assert not any(token in line for line in stack.web[0].lines)


def test_a_next_link_without_pushpins_signature_opens_nothing(stack, user, other_user):
    """The link alone (its es-meta token names the user) is not a way in for a client,
    not even with a session of their own: a bad request."""
    _, link = stack.refresh(user)
    assert _get(stack.web_ports[0], link, {}).status == 400
    assert _get(stack.web_ports[0], link, {"Grip-Sig": "forged"}).status == 400
    cookie = "; ".join(f"{k}={v}" for k, v in session_cookie(other_user).items())
    assert _get(stack.web_ports[0], link, {"Cookie": cookie}).status == 400


def test_a_refresh_after_the_user_is_deactivated_is_refused(stack, user):
    """Pushpin's signed refresh of a deactivated user's hold gets no fresh token."""
    response, hold = stack.follow(stack.open_hold(user))
    assert response.status == 200 and hold is not None
    type(user).objects.filter(pk=user.pk).update(is_active=False)
    assert stack.follow(hold)[0].status == 403


def test_a_forged_grip_signature_is_not_trusted(stack, user):
    """Straight to uvicorn with a made-up Grip-Sig: Django streams itself, no GRIP hold."""
    cookie = "; ".join(f"{k}={v}" for k, v in session_cookie(user).items())
    response = _get(stack.web_ports[0], EVENTS, {"Cookie": cookie, "Grip-Sig": "forged"})
    assert response.status == 200
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    assert response.getheader("Grip-Hold") is None
    assert response.getheader("Grip-Channel") is None


def test_a_direct_stream_still_gets_worker_events_over_redis(stack, streams, user):
    """EVENTSTREAM_REDIS is kept in GRIP mode: a stream not opened through Pushpin works."""
    direct = streams(f"http://127.0.0.1:{stack.web_ports[1]}{EVENTS}", user)
    direct.wait_for(lambda f: f.event == "stream-open")
    actors.noop.send(for_state={"user_pk": user.pk, "description": "bypassing pushpin"})
    direct.wait_for(lambda f: "bypassing pushpin" in f.data and 'data-status="done"' in f.data)


def outside_playwright(fn: Callable[[], T]) -> T:
    """Run ``fn`` (ORM work) in a thread of its own, closing its connection after.

    Inside Playwright's sync API an event loop counts as running in this thread: Django
    would refuse the ORM there, or open a connection in another context that outlives
    the test and blocks dropping the test database.
    """

    def run() -> T:
        try:
            return fn()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


@pytest.mark.browser
def test_browser_page_through_pushpin_updates_without_reload(stack, user):
    """Chromium loads the list through Pushpin; a row appears and turns done live, after
    both web processes are gone."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"needs Debian's {CHROMIUM}, which CI installs")
        pytest.skip(f"needs Debian's {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    from django.template import Context

    from taskstate.templatetags.taskstate import taskstate_scripts

    stack.require_next_link(user)
    cookie = session_cookie(user)["sessionid"]
    head = str(taskstate_scripts(Context({})))
    host = urlsplit(stack.url).hostname

    def with_scripts(route) -> None:
        # /taskstate/list/ is the list alone; give the page htmx and the app's scripts.
        if not route.request.is_navigation_request():
            route.continue_()
            return
        response = route.fetch()
        body = f"<!doctype html><html><head>{head}</head><body>{response.text()}</body></html>"
        route.fulfill(response=response, body=body)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            context = browser.new_context()
            context.add_cookies(
                [{"name": "sessionid", "value": cookie, "domain": host, "path": "/"}]
            )
            page = context.new_page()
            page.route("**/taskstate/list/", with_scripts)
            # stream-open makes the list resync itself from the database: wait for that.
            with page.expect_response(
                lambda r: "/taskstate/list/" in r.url and r.request.headers.get("hx-request")
            ) as resync:
                page.goto(f"{stack.url}/taskstate/list/")
            assert resync.value.status == 200
            assert stack.held(user_channel(user.pk)) == 1
            page.evaluate("window.taskstateNoReload = true")
            stack.settle(streams=1, since=time.monotonic())
            stack.stop_web()

            pk = outside_playwright(
                lambda: (
                    Task.objects.get(
                        message_id=actors.with_progress.send(
                            3, for_state={"user_pk": user.pk, "description": "in the browser"}
                        ).message_id
                    ).pk
                )
            )
            row = page.locator(f"#taskstate-rows > #taskstate-task-{pk}")
            row.and_(page.locator('[data-status="done"]')).wait_for(timeout=30_000)
            assert "in the browser" in row.inner_text()
            assert row.locator('[role="progressbar"]').get_attribute("aria-valuenow") == "100"
            assert page.evaluate("window.taskstateNoReload") is True
        finally:
            browser.close()
    assert stack.served_by(EVENTS, 1) == [stack.web_ports[0]]


def _pushpin_sent_everything() -> None:
    import django_grip  # type: ignore[import-untyped]

    django_grip.get_pubcontrol().wait_all_sent()


def test_logout_closes_the_streams_pushpin_holds_for_that_session(stack, streams, user):
    """Under Pushpin, logging out ends that session's held streams at
    once (taskstate publishes a close on the session's GRIP channel); another session of
    the same user keeps its stream."""
    stack.require_next_link(user)
    doomed = streams(f"{stack.url}{EVENTS}", user)
    kept = streams(f"{stack.url}{EVENTS}", user)
    doomed.wait_for(lambda f: f.event == "stream-open")
    kept.wait_for(lambda f: f.event == "stream-open")
    assert stack.held(user_channel(user.pk), count=2) == 2
    client = Client()
    client.cookies["sessionid"] = doomed.cookies["sessionid"]
    since = time.monotonic()
    assert client.post("/accounts/logout/").status_code in (200, 302)
    _pushpin_sent_everything()
    # Well before Pushpin's next refresh (every 120 s) would end it; a loaded machine may
    # take seconds to carry the close through the signal, the publish and Pushpin.
    doomed.wait_for(lambda f: f.event == "stream-error")
    assert doomed.wait_ended()
    print(f"FIGURE logout closed the held stream {time.monotonic() - since:.2f} s later")
    actors.noop.send(for_state={"user_pk": user.pk, "description": "after logout"})
    kept.wait_for(lambda f: "after logout" in f.data and 'data-status="done"' in f.data)
    assert not any("after logout" in f.data for f in doomed.frames)


def test_deactivation_closes_the_streams_pushpin_holds_for_that_user(
    stack, streams, user, other_user
):
    stack.require_next_link(user)
    theirs = streams(f"{stack.url}{EVENTS}", user)
    bystander = streams(f"{stack.url}{EVENTS}", other_user)
    theirs.wait_for(lambda f: f.event == "stream-open")
    bystander.wait_for(lambda f: f.event == "stream-open")
    stack.held(user_channel(user.pk))
    stack.held(user_channel(other_user.pk))
    user.is_active = False
    user.save()
    _pushpin_sent_everything()
    # Well before Pushpin's next refresh (every 120 s) would end it; a loaded machine may
    # take seconds to carry the close through the signal, the publish and Pushpin.
    theirs.wait_for(lambda f: f.event == "stream-error")
    assert theirs.wait_ended()
    actors.noop.send(for_state={"user_pk": other_user.pk, "description": "bystander"})
    bystander.wait_for(lambda f: "bystander" in f.data and 'data-status="done"' in f.data)


def test_a_leaked_next_link_requested_through_pushpin_reads_nothing(
    stack, streams, user, other_user
):
    """Pushpin signs every request it forwards, a client's too: a leaked next link,
    asked for through Pushpin's public port, must not open the owner's stream. Both a
    link Pushpin already refreshed through and one it has not used yet."""
    stack.require_next_link(user)
    _, used = stack.refresh(user)
    fresh = stack.open_hold(user).link
    alice = streams(f"{stack.url}{EVENTS}", user)
    alice.wait_for(lambda f: f.event == "stream-open")
    attackers = [
        streams(f"{stack.url}{used}"),
        streams(f"{stack.url}{fresh}"),
        streams(f"{stack.url}{fresh}", other_user),
    ]
    assert [a.status for a in attackers] == [400, 400, 400]
    actors.noop.send(for_state={"user_pk": user.pk, "description": "SECRET of alice"})
    alice.wait_for(lambda f: "SECRET of alice" in f.data and 'data-status="done"' in f.data)
    assert not any("SECRET of alice" in f.data for a in attackers for f in a.frames)


def test_django_eventstreams_own_view_through_pushpin_opens_no_taskstate_channel(
    stack, streams, user
):
    """django-eventstream's view, mounted next to ours (tests/urls.py), through Pushpin:
    the owner with their session, and a next link of the owner's hold sent there
    anonymously. Neither is held, so neither skips the rules of ``taskstate:events``."""
    stack.require_next_link(user)
    theirs = f"/eventstream/?channel={user_channel(user.pk)}"
    hold = stack.open_hold(user)
    leaked = "/eventstream/?" + urlsplit(hold.link).query
    alice = streams(f"{stack.url}{EVENTS}", user)
    alice.wait_for(lambda f: f.event == "stream-open")
    doors = [streams(f"{stack.url}{theirs}", user), streams(f"{stack.url}{leaked}")]
    for door in doors:
        first = door.wait_for(lambda f: f.event in ("stream-open", "stream-error"))
        assert first.event == "stream-error" and '"forbidden"' in first.data
    actors.noop.send(for_state={"user_pk": user.pk, "description": "SECRET of alice"})
    alice.wait_for(lambda f: "SECRET of alice" in f.data and 'data-status="done"' in f.data)
    assert not any("SECRET of alice" in f.data for door in doors for f in door.frames)


def test_the_json_stream_through_pushpin_gets_every_change_as_json(stack, streams, user):
    import json

    from taskstate.web.channels import json_channel
    from tests.test_task_json import validate

    stream = streams(f"{stack.url}/taskstate/json/events/", user)
    assert stream.status == 200
    stream.wait_for(lambda f: f.event == "stream-open")
    assert stack.held(json_channel(user.pk)) == 1
    html = rf"channel=events-{re.escape(user_channel(user.pk))}$"
    assert not [line for line in stack.lines() if re.search(html, line)]
    message = actors.paced.send(3, 0.1, for_state={"user_pk": user.pk, "description": "json pp"})
    stream.wait_for(lambda f: f.event == "task" and '"status":"done"' in f.data)
    task = Task.objects.get(message_id=message.message_id)
    rows = [json.loads(f.data) for f in stream.frames if f.event == "task"]
    for row in rows:
        validate(row)
    assert {"enqueued", "running", "done"} <= {r["status"] for r in rows if r["id"] == task.pk}


def test_an_objects_stream_through_pushpin_reaches_a_viewer_until_the_permission_goes(
    stack, streams, user, other_user
):
    """A viewer of a team gets the team's task through Pushpin (run by the worker for
    another user); once the viewer loses the permission, Pushpin's refresh is refused."""
    from django.contrib.auth.models import Group, Permission

    from taskstate.web.channels import object_channels, object_token
    from taskstate.web.publish import OBJECT_CHANGED_EVENT
    from tests.support.faults import wait_for

    team = Group.objects.create(name="Team Orion")
    permission = Permission.objects.get(codename="view_group")
    user.user_permissions.add(permission)
    path = f"/taskstate/object/{object_token('auth.group', str(team.pk))}/events/"
    response, hold = stack.follow(stack.open_hold(user, path))
    assert response.status == 200 and hold is not None, f"{NEXT_LINK_REFUSED} (object stream)"
    assert streams(f"{stack.url}{path}", other_user).status == 403
    stream = streams(f"{stack.url}{path}", user)
    assert stream.status == 200
    stream.wait_for(lambda f: f.event == "stream-open")
    assert stack.held(object_channels("auth.group", str(team.pk))[0]) == 1
    message = actors.noop.send(
        for_state={"user_pk": other_user.pk, "description": "team import", "object": team}
    )
    task = wait_for(
        lambda: Task.objects.filter(message_id=message.message_id, status=Status.DONE).first(),
        timeout=30,
        what="the team's task done",
    )
    stream.wait_for(lambda f: f.event == OBJECT_CHANGED_EVENT and f'"task": {task.pk}' in f.data)
    user.user_permissions.remove(permission)
    refused, _ = stack.follow(hold)
    assert refused.status == 403


def test_an_objects_json_stream_through_pushpin_gets_its_changes_as_json(
    stack, streams, user, other_user
):
    import json

    from django.contrib.auth.models import Group, Permission

    from taskstate.web.channels import object_channels, object_token
    from tests.support.faults import wait_for
    from tests.test_task_json import validate

    team = Group.objects.create(name="Team Orion")
    user.user_permissions.add(Permission.objects.get(codename="view_group"))
    path = f"/taskstate/object/{object_token('auth.group', str(team.pk))}/json/events/"
    assert streams(f"{stack.url}{path}", other_user).status == 403
    stream = streams(f"{stack.url}{path}", user)
    assert stream.status == 200
    stream.wait_for(lambda f: f.event == "stream-open")
    assert stack.held(object_channels("auth.group", str(team.pk))[1]) == 1
    html = rf"channel=events-{re.escape(object_channels('auth.group', str(team.pk))[0])}$"
    assert not [line for line in stack.lines() if re.search(html, line)]
    message = actors.noop.send(for_state={"user_pk": other_user.pk, "object": team})
    task = wait_for(
        lambda: Task.objects.filter(message_id=message.message_id, status=Status.DONE).first(),
        timeout=30,
        what="the team's task done",
    )
    changed = stream.wait_for(lambda f: f.event == "changed" and f'"id":{task.pk}' in f.data)
    validate(json.loads(changed.data), "ChangedEvent")
