"""A small SSE client for tests: reads frames from a real HTTP stream in a thread."""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Frame:
    event: str | None
    data: str


@dataclass
class SSEClient:
    url: str
    cookies: dict[str, str] = field(default_factory=dict)
    frames: list[Frame] = field(default_factory=list)
    status: int | None = None

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._closed = False
        parts = urlsplit(self.url)
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Accept": "text/event-stream"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self._conn.request("GET", path, headers=headers)
        self._response = self._conn.getresponse()
        self.status = self._response.status
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.status == 200:
            self._thread.start()

    def _read(self) -> None:
        event: str | None = None
        data: list[str] = []
        try:
            while not self._closed:
                raw = self._response.readline()
                if not raw:
                    break
                line = raw.decode().rstrip("\r\n")
                if line == "":
                    if event is not None or data:
                        with self._changed:
                            self.frames.append(Frame(event, "\n".join(data)))
                            self._changed.notify_all()
                    event, data = None, []
                elif line.startswith(":"):
                    continue
                elif line.startswith("event:"):
                    event = line[6:].removeprefix(" ")
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass

    def wait_for(self, predicate, timeout: float = 30.0) -> Frame:
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
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._conn.sock and self._conn.sock.shutdown(2)
        self._conn.close()


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
