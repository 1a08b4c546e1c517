"""The event streams of this web process: opened by whom, with which session, for how long.

The rules every door to a taskstate channel applies (docs/pushpin.md): GRIP-only
parameters need the proxy's signature and the hold's refresh mark; a stream lives only as
long as its session (checked every ``STREAM_CHECK_INTERVAL`` here, on each refresh under
GRIP); at most ``STREAMS_PER_USER`` open streams per user and process (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    StreamingHttpResponse,
)
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from taskstate.core import conf
from taskstate.core.conf import get_settings
from taskstate.core.threads import close_idle_connections
from taskstate.web.channels import own_channels, site_namespace

logger = logging.getLogger("taskstate")

#: Query parameter of the next link naming the stream's session reference.
SESSION_REF_PARAM = "ts-stream"
_REF_KEY = "_taskstate_stream_session"
_SESSION_CHANNEL_SALT = "taskstate.streams.grip_session_channel"
_REFRESH_MARK_SALT = "taskstate.streams.refresh_mark"
#: Query parameters only the GRIP proxy may send.
_GRIP_ONLY = ("es-meta", "recover")


def grip_signed(request: HttpRequest) -> bool:
    grip = getattr(request, "grip", None)
    return bool(grip is not None and grip.proxied and grip.signed)


def refuse_unsigned_grip_parameters(request: HttpRequest) -> HttpResponse | None:
    """400 for ``es-meta`` or ``recover`` on a request the proxy did not sign."""
    if grip_signed(request) or not any(name in request.GET for name in _GRIP_ONLY):
        return None
    return _bad_request("es-meta and recover are accepted only from the GRIP proxy.")


def _bad_request(text: str) -> HttpResponse:
    return HttpResponseBadRequest(text + "\n", content_type="text/plain")


def check_refresh(request: HttpRequest, channel: str | None = None) -> HttpResponse | None:
    """The proxy's refresh of a held stream: 400 for a malformed ``es-meta``, one naming
    another channel than ``channel`` (by default one of the user's own) or one without the
    hold's refresh mark; 403 once the stream's session is no longer valid. None to serve
    it, as a request of the stream's user with ``es-meta`` taken out (django-eventstream
    would load from it a user ``taskstate:events`` never admitted).
    """
    import jwt

    try:
        claims = jwt.decode(
            request.GET.get("es-meta", ""),
            settings.SECRET_KEY.encode(),
            algorithms=["HS256"],
            options={"require": ["exp"]},
        )
    except jwt.InvalidTokenError:
        return _bad_request("Invalid es-meta.")
    user_id, channels = claims.get("user"), claims.get("channels")
    if (
        not isinstance(user_id, str)
        or not isinstance(channels, list)
        or len(channels) != 1
        or channels[0] not in ((channel,) if channel is not None else own_channels(user_id))
    ):
        return _bad_request("Invalid es-meta.")
    reference = request.GET.get(SESSION_REF_PARAM)
    if not _marked_by_proxy(request, user_id, reference):
        return _bad_request(
            "es-meta is accepted only on the GRIP proxy's own refresh of a held stream."
        )
    if _cookie_sessions():
        # No server-side session to refer to: the user must still be active.
        user = get_user_model()._default_manager.filter(pk=user_id).first()
        if user is None or not getattr(user, "is_active", True):
            return HttpResponseForbidden("The user of this stream is inactive.\n")
        _serve_as(request, user, None)
        return None
    stored = _session_store()(reference).get(_REF_KEY) if reference else None
    session_key = stored if isinstance(stored, str) else None
    user = _session_user(session_key) if session_key else None
    if (
        user is None
        or str(user.pk) != user_id
        or session_key is None
        or reference is None
        or not _consume_reference(reference)
    ):
        return HttpResponseForbidden("The session of this stream has ended.\n")
    _refer_to(request, _session_store()(session_key))
    _serve_as(request, user, session_key)
    return None


def _serve_as(request: HttpRequest, user: Any, session_key: str | None) -> None:
    request._taskstate_stream = (session_key, user.pk)  # type: ignore[attr-defined]
    request.user = user
    params = request.GET.copy()
    params.pop("es-meta", None)
    request.GET = params  # type: ignore[assignment]


def refresh_channel() -> str:
    """The GRIP channel whose prev-id marks a hold's refresh as the proxy's own: nothing
    is published on it, so the proxy sends that prev-id back as ``Grip-Last``."""
    return f"taskstate-refresh-{site_namespace()}"


def _refresh_mark(user_id: str, reference: str | None) -> str:
    return salted_hmac(
        _REFRESH_MARK_SALT, f"{user_id}:{reference or ''}", algorithm="sha256"
    ).hexdigest()


def _marked_by_proxy(request: HttpRequest, user_id: str, reference: str | None) -> bool:
    # Pushpin sets Grip-Last only on its own refreshes and strips a client's
    # (docs/pushpin.md); Pushpin signs a client's request too, so the signature is not enough.
    last = getattr(getattr(request, "grip", None), "last", None)
    mark = last.get(refresh_channel()) if isinstance(last, dict) else None
    return isinstance(mark, str) and constant_time_compare(mark, _refresh_mark(user_id, reference))


def add_session_reference(request: HttpRequest) -> None:
    """Put a reference to the request's session into the query string, which
    django-eventstream copies into the next link the proxy refreshes through. The
    session key itself never appears in a URL (it would be in access logs)."""
    session = getattr(request, "session", None)
    if session is not None and session.session_key is not None and not _cookie_sessions():
        _refer_to(request, session)


def _refer_to(request: HttpRequest, session: Any) -> None:
    store = _session_store()()
    store[_REF_KEY] = session.session_key
    store.set_expiry(session.get_expiry_date())
    store.save()
    params = request.GET.copy()
    params[SESSION_REF_PARAM] = store.session_key
    request.GET = params  # type: ignore[assignment]


def _consume_reference(reference: str) -> bool:
    """Delete the reference record; whether this call deleted it (one refresh per link)."""
    store_class = _session_store()
    if hasattr(store_class, "get_model_class"):
        deleted, _ = (
            store_class.get_model_class()._default_manager.filter(session_key=reference).delete()
        )
        return bool(deleted)
    store = store_class(reference)
    if _REF_KEY not in store.load():
        return False
    store.delete(reference)
    return True


def add_close_channels(request: HttpRequest) -> None:
    """Subscribe the stream Pushpin is about to hold to its session's and its user's
    close channels (logout, deactivation; a password change is caught at the next
    refresh), and to :func:`refresh_channel` with the mark its refresh must carry back."""
    instruct = getattr(getattr(request, "grip", None), "instruct", None)
    if instruct is None:
        return
    from gripcontrol import Channel

    # A refresh serves the stream's user and session (check_refresh), else the request's.
    session_key, user_pk = getattr(request, "_taskstate_stream", None) or (
        getattr(getattr(request, "session", None), "session_key", None),
        request.user.pk,
    )
    if session_key:
        instruct.add_channel(Channel(grip_session_channel(session_key)))
    instruct.add_channel(Channel(grip_user_channel(user_pk)))
    mark = _refresh_mark(str(user_pk), request.GET.get(SESSION_REF_PARAM))
    instruct.add_channel(Channel(refresh_channel(), prev_id=mark))


def grip_session_channel(session_key: str) -> str:
    # An HMAC: no session key in a channel name.
    digest = salted_hmac(_SESSION_CHANNEL_SALT, session_key, algorithm="sha256")
    return f"taskstate-session-{digest.hexdigest()}"


def grip_user_channel(user_pk: Any) -> str:
    return f"taskstate-close-{site_namespace()}-{user_pk}"


def _grip_configured() -> bool:
    return bool(getattr(settings, "GRIP_URL", None) or getattr(settings, "GRIP_PROXIES", None))


def _close_held_streams(channel: str) -> None:
    from django_eventstream.utils import sse_encode_error
    from django_grip import publish
    from gripcontrol import HttpStreamFormat

    content = sse_encode_error("forbidden", "The session of this stream has ended.")
    try:
        publish(channel, HttpStreamFormat(content), id="taskstate-close-1")
        publish(
            channel,
            HttpStreamFormat(close=True),
            id="taskstate-close-2",
            prev_id="taskstate-close-1",
        )
    except Exception:
        logger.warning("taskstate: could not tell the GRIP proxy to close streams", exc_info=True)


def on_logged_out(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """End the streams of a session at logout: those served here and those the GRIP proxy
    holds (other processes': at their next check)."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if not session_key:
        return
    for stream in registry.open_streams():
        if stream.session_key == session_key:
            stream.close("The session of this stream has ended.")
    if _grip_configured():
        _close_held_streams(grip_session_channel(session_key))


def on_user_saved(sender: Any, instance: Any, **kwargs: Any) -> None:
    if getattr(instance, "is_active", True) is False and _grip_configured():
        _close_held_streams(grip_user_channel(instance.pk))


def _session_store() -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore


def _cookie_sessions() -> bool:
    return str(settings.SESSION_ENGINE).endswith("signed_cookies")


def _session_user(session_key: str) -> Any:
    """The active user logged in with ``session_key``, or None: the checks of
    ``django.contrib.auth.get_user`` without its side effects (it flushes the session)."""
    data = _session_store()(session_key).load()
    user_id, backend_path = _session_login(data)
    if user_id is None or backend_path is None:
        return None
    user = load_backend(backend_path).get_user(user_id)
    return user if _session_holds(data, user) else None


def _session_login(data: dict[str, Any]) -> tuple[Any, str | None]:
    try:
        user_id = get_user_model()._meta.pk.to_python(data[SESSION_KEY])
        backend_path = data[BACKEND_SESSION_KEY]
    except Exception:
        return None, None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None, None
    return user_id, backend_path


def _session_holds(data: dict[str, Any], user: Any) -> bool:
    """Whether ``user`` is active and the session's auth hash still matches theirs."""
    if user is None or not getattr(user, "is_active", True):
        return False
    if hasattr(user, "get_session_auth_hash"):
        stored = data.get(HASH_SESSION_KEY)
        if not stored:
            return False
        candidates = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
        return any(constant_time_compare(stored, c) for c in candidates)
    return True


def _load_sessions(keys: set[str]) -> dict[str, dict[str, Any]]:
    store_class = _session_store()
    if not hasattr(store_class, "get_model_class"):
        return {key: data for key in keys if (data := store_class(key).load())}
    rows = store_class.get_model_class()._default_manager.filter(
        session_key__in=keys, expire_date__gt=timezone.now()
    )
    decoder = store_class()
    return {
        key: decoder.decode(raw) for key, raw in rows.values_list("session_key", "session_data")
    }


@dataclass(eq=False)
class LocalStream:
    user_pk: Any
    session_key: str | None
    #: When the session check last read this stream's session (at first: when it opened).
    checked: float
    reason: str | None = None  # why it was closed
    #: Asked at each check, in the check's thread: False closes an object's stream.
    still_allowed: Callable[[], bool] | None = None
    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    def close(self, reason: str) -> None:
        """Ask the stream to end (from any thread)."""
        self.reason = reason
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)


class Registry:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._streams: set[LocalStream] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._checker: ThreadPoolExecutor | None = None

    def admit(
        self,
        user_pk: Any,
        session_key: str | None,
        still_allowed: Callable[[], bool] | None = None,
    ) -> LocalStream | None:
        """Register a new stream of ``user_pk``; None when the user is at the cap."""
        cap = get_settings().STREAMS_PER_USER
        with self._lock:
            if sum(1 for s in self._streams if s.user_pk == user_pk) >= cap:
                return None
            stream = LocalStream(user_pk, session_key, self.clock(), still_allowed=still_allowed)
            self._streams.add(stream)
            return stream

    def remove(self, stream: LocalStream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def open_streams(self) -> list[LocalStream]:
        with self._lock:
            return list(self._streams)

    def watch(self) -> None:
        """Make sure this event loop runs the session check."""
        loop = asyncio.get_running_loop()
        with self._lock:
            task = self._watcher
            if task is not None and not task.done() and task.get_loop() is loop:
                return
            self._watcher = loop.create_task(self._watch(), name="taskstate-stream-check")

    def _check_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._checker is None:
                self._checker = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="taskstate-stream-check"
                )
            return self._checker

    def check(self, pairs: set[tuple[Any, str | None]]) -> Future[set[tuple[Any, str | None]]]:
        """:func:`_ended_sessions` in the check's own thread, which keeps its database
        connection from one check to the next."""
        return self._check_executor().submit(_checked, pairs)

    async def _watch(self) -> None:
        # A check holds the GIL, and so the event loop serving the streams, while it reads
        # (~100 ms for a thousand sessions): a round of STREAM_CHECK_INTERVAL checks its
        # streams in turns of at most STREAMS_PER_CHECK, the longest unchecked first, at
        # even steps; each stream at most an interval after its last check.
        failing = False
        while True:
            start = self.clock()
            due = sorted(self.open_streams(), key=lambda s: s.checked)
            size = conf.STREAMS_PER_CHECK
            turns = max(1, -(-len(due) // size))
            for turn in range(turns):
                streams = due[turn * size : (turn + 1) * size]
                # Sooner when a stream would wait longer than an interval (fewer turns).
                step = min(
                    start + conf.STREAM_CHECK_INTERVAL * (turn + 1) / turns,
                    min((s.checked for s in streams), default=math.inf)
                    + conf.STREAM_CHECK_INTERVAL,
                )
                await asyncio.sleep(max(0.0, step - self.clock()))
                if turn == turns - 1:
                    known = set(due)
                    streams += [s for s in self.open_streams() if s not in known]
                streams = [s for s in streams if s.reason is None]
                if streams:
                    failing = await self._check_turn(streams, failing)

    async def _check_turn(self, streams: list[LocalStream], failing: bool) -> bool:
        """Close those of ``streams`` whose session ended or whose user may no longer see
        them; whether the check is failing (logged once per outage)."""
        checked = self.clock()
        for stream in streams:
            stream.checked = checked
        try:
            ended = await asyncio.wrap_future(
                self.check({(s.user_pk, s.session_key) for s in streams})
            )
            rechecked = [
                s
                for s in streams
                if s.still_allowed is not None and (s.user_pk, s.session_key) not in ended
            ]
            refused = (
                await asyncio.wrap_future(self._check_executor().submit(_refused, rechecked))
                if rechecked
                else []
            )
        except Exception:
            if not failing:
                logger.error(
                    "taskstate: cannot check the sessions of open streams; they stay "
                    "open until the check works again.",
                    exc_info=True,
                )
            return True
        if failing:
            logger.warning("taskstate: checking the sessions of open streams works again.")
        for stream in streams:
            if (stream.user_pk, stream.session_key) in ended:
                stream.close("The session of this stream has ended.")
        for stream in refused:
            stream.close("You may no longer see these tasks.")
        return False


def _ended_sessions(pairs: set[tuple[Any, str | None]]) -> set[tuple[Any, str | None]]:
    """The (user pk, session key) pairs whose session no longer holds that active user:
    two queries for any number of streams with database-backed sessions."""
    sessions = _load_sessions({key for _, key in pairs if key})
    logins = {key: _session_login(data) for key, data in sessions.items()}
    wanted = {pk for pk, _ in pairs} | {uid for uid, _ in logins.values() if uid is not None}
    users = {u.pk: u for u in get_user_model()._default_manager.filter(pk__in=wanted)}
    ended = set()
    for user_pk, session_key in pairs:
        if session_key is None:
            user = users.get(user_pk)
            valid = user is not None and bool(getattr(user, "is_active", True))
        else:
            data = sessions.get(session_key)
            user_id, _ = logins.get(session_key, (None, None))
            valid = (
                data is not None and user_id == user_pk and _session_holds(data, users.get(user_id))
            )
        if not valid:
            ended.add((user_pk, session_key))
    return ended


def _checked(pairs: set[tuple[Any, str | None]]) -> set[tuple[Any, str | None]]:
    """:func:`_ended_sessions` through this thread's kept connection, and once more
    through a new one when that fails (a restart, an idle timeout)."""
    try:
        return _ended_sessions(pairs)
    except Exception:
        close_idle_connections()
    try:
        return _ended_sessions(pairs)
    except Exception:
        close_idle_connections()
        raise


def _refused(streams: list[LocalStream]) -> list[LocalStream]:
    """The streams whose ``still_allowed`` is false or raises (the browser reconnects and
    the stream view asks again)."""
    refused = []
    for stream in streams:
        assert stream.still_allowed is not None
        try:
            allowed = stream.still_allowed()
        except Exception:
            logger.warning("taskstate: could not check an object stream's user", exc_info=True)
            close_idle_connections()
            allowed = False
        if not allowed:
            refused.append(stream)
    return refused


registry = Registry()


def too_many_streams() -> HttpResponse:
    return HttpResponse(
        f"Too many open streams for this user (at most {get_settings().STREAMS_PER_USER} "
        "per web process). Close a tab and try again.\n",
        status=429,
        content_type="text/plain",
        headers={"Retry-After": "30"},
    )


def guard(response: StreamingHttpResponse, stream: LocalStream) -> None:
    """End ``response`` when ``stream`` is closed; forget ``stream`` however it ends."""
    if not response.is_async:
        registry.remove(stream)
        return
    content = _guarded(response.streaming_content, stream)  # type: ignore[arg-type]
    weakref.finalize(content, registry.remove, stream)
    response.streaming_content = content


async def _guarded(inner: AsyncIterator[bytes], stream: LocalStream) -> AsyncIterator[bytes]:
    from django_eventstream.utils import sse_encode_error

    stream._loop = asyncio.get_running_loop()
    stream._wake = asyncio.Event()
    registry.watch()
    closed = asyncio.ensure_future(stream._wake.wait())
    step: asyncio.Future[bytes] | None = None
    try:
        while stream.reason is None:
            step = asyncio.ensure_future(inner.__anext__())
            await asyncio.wait({step, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                break
            try:
                chunk = step.result()
            except StopAsyncIteration:
                return
            step = None
            yield chunk
        if stream.reason is not None:
            yield sse_encode_error("forbidden", stream.reason).encode()
    finally:
        closed.cancel()
        registry.remove(stream)
        if step is not None and not step.done():
            # django-eventstream's loop ends (and drops its listener) on cancellation.
            step.cancel()
        else:
            aclose = getattr(inner, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
