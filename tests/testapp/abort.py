"""dramatiq-abort's middleware on the test Redis, for the hard-cancel tests."""

from __future__ import annotations

from django.conf import settings
from dramatiq_abort import Abortable
from dramatiq_abort.backends import RedisBackend


class TestAbortable(Abortable):
    def __init__(self) -> None:
        super().__init__(backend=RedisBackend.from_url(settings.REDIS_URL))
