"""What the soak's processes record outside the database under test (``benchmarks/soak.py``):
a list on the soak's private Redis (``SOAK_RECORD_URL``)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import dramatiq
import redis

LOG = "soak:log"  # one JSON entry per admission, body start and body end
TO_CANCEL = "soak:to-cancel"  # keys of tasks the owner cancels (the soak's cancellers)

_client: redis.Redis | None = None


def recorder() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["SOAK_RECORD_URL"])
    return _client


def record(event: str, key: str) -> None:
    recorder().rpush(LOG, json.dumps([event, key, time.time()]))


class AdmissionRecorder(dramatiq.Middleware):
    """Listed right after ``StateMiddleware``: records the moment a soak message passed its
    hooks, which is when its body is let start (the body's own first line may run later on
    a busy machine). A message the hooks skip never gets here."""

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if message.actor_name.startswith("soak_"):
            record("admitted", str(message.args[0]))
