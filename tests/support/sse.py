"""An SSE client for tests: httpx-sse reads a real HTTP stream in a thread, frames are kept."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse


@dataclass
class Frame:
    #: The event's name; "" for an unnamed message (httpx-sse calls those "message").
    event: str
    data: str
    #: When it arrived (wall clock, comparable with the database's timestamps).
    at: float = 0.0


class SSEClient:
    """Opens ``url`` at once; :attr:`status` is the answer's status code. A 200 answer is
    read in a thread until :meth:`close`; every frame lands in :attr:`frames`."""

    def __init__(self, url: str, cookies: dict[str, str] | None = None) -> None:
        self.url = url
        self.cookies = dict(cookies or {})
        self.frames: list[Frame] = []
        self._changed = threading.Condition()
        self._open = contextlib.ExitStack()
        try:
            client = self._open.enter_context(
                httpx.Client(cookies=cookies, timeout=httpx.Timeout(60, connect=10))
            )
            self._source = self._open.enter_context(connect_sse(client, "GET", url))
        except BaseException:
            self._open.close()
            raise
        self.status = self._source.response.status_code
        self._thread = threading.Thread(target=self._read, name="sse-client", daemon=True)
        if self.status == 200:
            self._thread.start()

    def _read(self) -> None:
        try:
            for sse in self._source.iter_sse():
                event = "" if sse.event == "message" else sse.event
                with self._changed:
                    self.frames.append(Frame(event, sse.data, time.time()))
                    self._changed.notify_all()
        except (httpx.HTTPError, SSEError, OSError, ValueError):
            pass  # the stream ended or was closed under the reader

    def wait_for(self, predicate: Callable[[Frame], bool], timeout: float = 30.0) -> Frame:
        """The first frame matching ``predicate``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for frame in self.frames:
                    if predicate(frame):
                        return frame
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no matching SSE frame in {timeout}s; got {self.frames!r}"
                    )
                self._changed.wait(remaining)

    def wait_ended(self, timeout: float = 30.0) -> bool:
        """Wait until the server ended the stream; whether it did within ``timeout``."""
        if self._thread.ident is None:
            return True  # refused: there was never a stream to read
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        # The reader blocks in a socket read: shut the socket down to wake it up.
        stream = self._source.response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(5)
        with contextlib.suppress(httpx.HTTPError, OSError):
            self._open.close()


def session_cookie(user: Any) -> dict[str, str]:
    """The session cookie of ``user`` logged in, for a client that is not a browser."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value}


def assert_each_hears_only_their_own(
    mine: SSEClient, theirs: SSEClient, send: Any, me: Any, them: Any
) -> None:
    """Each user runs a task; each stream gets its owner's row and never the other's."""
    send(for_state={"user_pk": me.pk, "description": "private export"})
    send(for_state={"user_pk": them.pk, "description": "bobs own"})
    mine.wait_for(lambda f: "private export" in f.data and 'data-status="done"' in f.data)
    theirs.wait_for(lambda f: "bobs own" in f.data and 'data-status="done"' in f.data)
    assert not any("private export" in f.data for f in theirs.frames)
    assert not any("bobs own" in f.data for f in mine.frames)
