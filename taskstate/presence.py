"""Whether anyone can receive a user's events now, so rows are rendered only for them.

Rendering a row costs the publishing process about a millisecond of CPU (most of the
background sender's work); a user with no page open receives nothing, and the page they
open later reads its rows from the database on its ``stream-open`` event anyway. So the
publisher asks :func:`listened` before rendering, and skips the render and the send when
nobody listens.

Who listens:

- **In this process**: django-eventstream's listener manager holds every stream this
  process serves (taskstate's view and django-eventstream's own), by channel. That is
  the whole answer without ``EVENTSTREAM_REDIS`` (events then reach this process's
  streams alone).
- **In other processes, through Redis** (``EVENTSTREAM_REDIS``): each web process marks
  the taskstate channels it serves in a sorted set per channel (member: the process,
  score: when the mark lapses), ``LEASE`` seconds ahead, renewed every ``RENEW_EVERY``
  seconds and taken back within that time once its last stream ends. A key expires
  ``2 * LEASE`` after its last renewal, so the mark of a process that died without
  taking it back costs renders for nobody for at most that long. The keys are named
  after the channel, which carries the site's namespace, so two sites on one Redis
  never see each other's marks.
- **Behind a GRIP proxy** (Pushpin holds the streams, unseen by Django): unknown, so
  always yes. Likewise with ``TASKSTATE["PUBLISH_WITHOUT_LISTENERS"]`` (for a project
  that delivers taskstate channels by other means), without ``django_eventstream`` in
  ``INSTALLED_APPS`` (no stream would set a mark), and whenever Redis cannot answer.

Nothing is lost by the skip. A stream marks its channel before its first event
(django-eventstream reads the stream's first events, then sends ``stream-open``; the
mark is set in that read, see :func:`install`), and the page reads its rows on
``stream-open``: a change committed before the mark is in that read, a change committed
after it is published. A mark that could not be set or renewed in time is set again as
soon as Redis answers, and the streams of its channel then get ``stream-reset`` (their
pages read their rows again). So do the streams of a channel whose mark Redis lost
(a restart without persistence, a flush, an eviction), found when the renewal adds it
back, and of a channel whose mark was set too slowly for the stream to wait for it.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

from taskstate.conf import get_settings

logger = logging.getLogger("taskstate")

#: Seconds a web process's mark lasts without being renewed.
LEASE = 30.0
#: Seconds between two renewals (and the longest a closed stream's mark outlives it).
RENEW_EVERY = 10.0
#: Seconds between two tries to set marks while Redis does not answer.
RETRY_EVERY = 1.0
#: Seconds a publisher trusts a "yes" read from Redis.
TRUST_YES_FOR = 2.0
#: Seconds during which, after a failed read, every channel counts as listened.
FAIL_OPEN_FOR = 5.0
#: Socket timeouts of the presence reads and writes (seconds).
TIMEOUT = 2.0
#: "Yes" answers remembered at most (oldest dropped first).
MAX_REMEMBERED = 10_000

_KEY_PREFIX = "taskstate:listening:"
RESET = "stream-reset"


def _key(channel: str) -> str:
    return _KEY_PREFIX + channel


def is_ours(channel: str) -> bool:
    return channel.startswith(get_settings().CHANNEL_PREFIX)


def _uses_redis() -> bool:
    """Whether events go through Redis: as django-eventstream decides, even ``{}`` means
    Redis (its defaults)."""
    from django.conf import settings

    return hasattr(settings, "EVENTSTREAM_REDIS")


def _redis_options() -> dict[str, Any] | None:
    from django.conf import settings

    if not _uses_redis():
        return None
    options = settings.EVENTSTREAM_REDIS or {}
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    # Bounded whatever the project's options say (they serve its long-lived pub/sub): a
    # connection found broken (Redis restarted) is replaced once, a timeout is not
    # retried, so a hung Redis costs one TIMEOUT.
    return {
        **options,
        "socket_connect_timeout": TIMEOUT,
        "socket_timeout": TIMEOUT,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }


def _grip() -> bool:
    from django.conf import settings

    return bool(getattr(settings, "GRIP_URL", None) or getattr(settings, "GRIP_PROXIES", None))


def _local_channels() -> set[str]:
    """The taskstate channels with a django-eventstream stream open in this process."""
    from django_eventstream.views import get_listener_manager

    manager = get_listener_manager()
    with manager.lock:
        return {channel for channel in manager.listeners_by_channel if is_ours(channel)}


def _listened_here(channel: str) -> bool:
    from django_eventstream.views import get_listener_manager

    return bool(get_listener_manager().listeners_by_channel.get(channel))


class Board:
    """This web process's marks in Redis: set, renewed, taken back.

    One thread writes every mark, so a mark taken back for a stream that ended can never
    land after the mark of a stream that has just opened on the same channel.
    """

    def __init__(self) -> None:
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._token = uuid.uuid4().hex  # this process, in the marks
        self._client: Any = None
        self._marked_until: dict[str, float] = {}  # channel -> when our mark lapses
        self._held: Counter[str] = Counter()  # explicit holds (hold/release)
        self._requested: set[str] = set()  # to mark in the next round
        self._unsure: set[str] = set()  # marked late: their streams get stream-reset
        self._started = 0  # rounds begun
        self._done = 0  # rounds ended
        self._down = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = 0

    # --- web side -------------------------------------------------------------------

    def share(self, channels: Iterable[str]) -> None:
        """Make sure the other processes see ``channels`` listened before returning (at
        most about ``2 * TIMEOUT`` when Redis hangs; while it fails, at once: the marks
        are then set, and the channels' streams reset, as soon as it answers). Called in
        a thread, never in an event loop."""
        ours = [c for c in channels if is_ours(c)]
        if not ours or not _uses_redis() or _grip():
            return  # behind GRIP nobody reads the marks
        fresh_until = time.time() + RENEW_EVERY
        with self._cond:
            self._start()
            due = [c for c in ours if self._marked_until.get(c, 0.0) < fresh_until]
            if not due:
                return
            self._requested.update(due)
            if self._down:
                self._unsure.update(due)
                self._cond.notify_all()
                return
            target = self._started + 1
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._done >= target, timeout=2 * TIMEOUT + 1):
                # Redis answers slowly: the stream goes on, and once the marks land its
                # page re-reads what a publisher may have skipped meanwhile.
                self._unsure.update(c for c in due if self._marked_until.get(c, 0.0) < fresh_until)

    def hold(self, channels: Iterable[str]) -> None:
        """Count ``channels`` as listened by this process until :meth:`release` (for a
        consumer of taskstate channels that is not a django-eventstream stream)."""
        channels = list(channels)
        with self._lock:
            self._held.update(channels)
        self.share(channels)

    def release(self, channels: Iterable[str]) -> None:
        with self._cond:
            self._held.subtract(channels)
            self._held = +self._held  # drop counts at zero
            self._cond.notify_all()

    def held_here(self, channel: str) -> bool:
        return self._held.get(channel, 0) > 0

    def _start(self) -> None:
        # Called with the lock held. A forked child starts over (see _after_fork).
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="taskstate-presence", daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        self._init_state()

    def stop(self, timeout: float = 5.0) -> None:
        """Take back this process's marks and end the thread (tests; a process that
        exits without it leaves marks that lapse, see the module's text)."""
        with self._cond:
            thread, self._stopping = self._thread, True
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return  # still in a Redis call: it ends after it (never two threads)
        with self._cond:
            self._stopping = False
            self._thread = None

    def _run(self) -> None:
        while True:
            with self._cond:
                pause = RETRY_EVERY if (self._unsure or self._down) else RENEW_EVERY
                if not self._requested and not self._stopping:
                    self._cond.wait(pause)
                if self._stopping:
                    gone = list(self._marked_until)
                    self._marked_until.clear()
                    self._requested.clear()
                    self._done = self._started
                    self._cond.notify_all()
                    break
                requested, self._requested = self._requested, set()
                self._started += 1
                number = self._started
            try:
                self._round(requested)
            except Exception:
                logger.exception("taskstate: marking open streams failed")
            with self._cond:
                self._done = number
                self._cond.notify_all()
        if gone:
            self._mark([], gone, time.time())
        if self._client is not None:
            self._client.close()
            self._client = None

    def _listened(self) -> set[str]:
        with self._lock:
            held = set(self._held)
        try:
            return _local_channels() | held
        except ImportError:  # without django-eventstream: explicit holds only
            return held

    def _round(self, requested: set[str]) -> None:
        listened = self._listened() | requested
        with self._lock:
            gone = [c for c in self._marked_until if c not in listened]
        if not self._mark(sorted(listened), gone, time.time()):
            return
        # A stream opened on a channel being taken back found its mark fresh and did not
        # ask for one: mark it again now, and reset its streams.
        back = set(gone) & self._listened()
        if back:
            with self._lock:
                self._requested.update(back)
                self._unsure.update(back)

    def _connection(self) -> Any:
        if self._client is None:
            import redis

            options = _redis_options()
            assert options is not None
            self._client = redis.Redis(**options)
        return self._client

    def _mark(self, channels: list[str], gone: list[str], now: float) -> bool:
        """Set (or renew) our marks on ``channels`` and take back those on ``gone``."""
        if not channels and not gone:
            return True
        until = now + LEASE
        try:
            pipe = self._connection().pipeline(transaction=False)
            for channel in channels:
                key = _key(channel)
                pipe.zadd(key, {self._token: until})  # 1: the mark was not there
                # Marks of processes that died; a lapsed mark is kept one more lease, so a
                # clock behind ours by less than that never takes back a live one.
                pipe.zremrangebyscore(key, "-inf", now - LEASE)
                pipe.expire(key, math.ceil(2 * LEASE))
            for channel in gone:
                pipe.zrem(_key(channel), self._token)
            replies = pipe.execute()
        except Exception as error:
            with self._lock:
                # Any of them may now read as not listened: reset them once marked.
                self._unsure.update(channels)
                # A take-back may have landed with its reply lost: none of them counts
                # as marked any more, and a stream of one of them that opened meanwhile
                # (finding the mark fresh) resyncs once it is marked again.
                for channel in gone:
                    self._marked_until[channel] = 0.0
                self._unsure.update(gone)
                first, self._down = not self._down, True
            if first:
                logger.error(
                    "taskstate: cannot mark open streams in Redis (%s); rows are sent only "
                    "once it answers, and the pages then resync.",
                    type(error).__name__,
                )
            return False
        added = replies[0 : 3 * len(channels) : 3]
        with self._lock:
            lapsed = [
                c
                for c, new in zip(channels, added, strict=True)
                if c in self._unsure
                or 0.0 < self._marked_until.get(c, 0.0) <= now
                # Our mark had gone (Redis restarted empty, flushed, evicted it) while we
                # took it for set: publishers may have skipped changes.
                or (new and self._marked_until.get(c, 0.0) > now)
            ]
            for channel in channels:
                self._marked_until[channel] = until
            for channel in gone:
                self._marked_until.pop(channel, None)
            # What is no longer listened needs no reset (its streams are gone).
            self._unsure &= self._requested
            was_down, self._down = self._down, False
        if was_down:
            logger.warning("taskstate: marking open streams in Redis works again.")
        if lapsed:
            try:
                _reset_local(lapsed)  # a change may have been skipped meanwhile
            except Exception:
                logger.exception("taskstate: could not tell streams to resync")
        return True


def _reset_local(channels: list[str]) -> None:
    """Send ``stream-reset`` to this process's streams of ``channels``."""
    import json

    try:
        from django_eventstream.event import Event
        from django_eventstream.views import get_listener_manager
    except ImportError:
        return
    manager = get_listener_manager()
    for channel in channels:
        data = json.dumps({"channels": [channel]})
        manager.add_to_queues(channel, Event(channel, RESET, data))


class Readers:
    """The publisher's side: is ``channel`` listened anywhere? One read per unknown
    channel, "yes" trusted for :data:`TRUST_YES_FOR`, "no" never remembered."""

    def __init__(self) -> None:
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._client: Any = None
        self._yes_until: dict[str, float] = {}
        self._open_until = 0.0  # fail open until then (a read failed)
        self._down = False
        self.reads = 0  # Redis reads so far (tests, benchmarks)

    def _after_fork(self) -> None:
        self._init_state()

    def listened(self, channel: str) -> bool:
        conf = get_settings()
        if conf.PUBLISH_WITHOUT_LISTENERS or not is_ours(channel) or _grip() or not _installed:
            # Without install() (django_eventstream not in INSTALLED_APPS) no stream of
            # this site sets marks: nothing here can know.
            return True
        try:
            if _listened_here(channel):
                return True
        except ImportError:
            return True  # without django-eventstream nothing here knows: send
        if board.held_here(channel):
            return True
        if not _uses_redis():
            return False  # events reach this process's streams alone, and none listens
        now = time.monotonic()
        with self._lock:
            if now < self._open_until or self._yes_until.get(channel, 0.0) > now:
                return True
        try:
            found = self._read(channel)
        except Exception as error:
            with self._lock:
                self._open_until = time.monotonic() + FAIL_OPEN_FOR
                first, self._down = not self._down, True
            if first:
                logger.error(
                    "taskstate: cannot read which pages are open from Redis (%s); "
                    "rendering every row until it answers.",
                    type(error).__name__,
                )
            return True
        if self._down:
            with self._lock:
                self._down = False
            logger.warning("taskstate: reading which pages are open works again.")
        if found:
            with self._lock:
                self._yes_until.pop(channel, None)
                self._yes_until[channel] = time.monotonic() + TRUST_YES_FOR
                while len(self._yes_until) > MAX_REMEMBERED:
                    del self._yes_until[next(iter(self._yes_until))]
        return found

    def _read(self, channel: str) -> bool:
        if self._client is None:
            import redis

            options = _redis_options()
            assert options is not None
            self._client = redis.Redis(**options)
        self.reads += 1
        # Any mark: no clock compared. A process that died leaves its mark until another
        # one cleans it or the key expires (rows rendered for nobody meanwhile).
        return bool(self._client.zcard(_key(channel)))


board = Board()
readers = Readers()
#: Whether :func:`install` ran in this process (django_eventstream is an installed app).
_installed = False


def listened(channel: str) -> bool:
    """Whether a change on ``channel`` can reach anyone now (see the module's text)."""
    return readers.listened(channel)


def install() -> None:
    """Mark a stream's channels before django-eventstream sends its ``stream-open``.

    django-eventstream's stream reads its first events (``eventstream.get_events``, in a
    thread) before it sends ``stream-open``; the channels are marked in that read. The
    function is looked up at each call, so wrapping the module's attribute is enough.
    Idempotent.
    """
    global _installed
    from django_eventstream import eventstream

    _installed = True
    upstream = eventstream.get_events
    if getattr(upstream, "_taskstate_marks", False):
        return

    def get_events(request: Any, *args: Any, **kwargs: Any) -> Any:
        # After upstream's read, which refuses a channel the user may not read (nothing
        # is marked for it), and still before stream-open is sent.
        events = upstream(request, *args, **kwargs)
        channels = getattr(request, "channels", None) or ()
        try:
            board.share(channels)
        except Exception:
            logger.exception("taskstate: marking a stream's channels failed")
        return events

    get_events._taskstate_marks = True  # type: ignore[attr-defined]
    eventstream.get_events = get_events


# A web process that exits takes its marks back (a second at most; else they lapse).
atexit.register(board.stop, 1.0)
os.register_at_fork(after_in_child=board._after_fork)
os.register_at_fork(after_in_child=readers._after_fork)
