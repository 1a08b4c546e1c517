"""The background sender past its queue limit: what reaches Redis, and which pages reset.

The sender's thread is held while N events for U users are handed over (more than
``MAX_PENDING`` fit), then released. A subscription to django-eventstream's Redis
channel counts what each user's channel received.

python benchmarks/courier_overflow.py           # 20,000 events for 200 users
python benchmarks/courier_overflow.py --smoke   # 2,000 for 20 users, MAX_PENDING 1,000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    events, users = (2_000, 20) if args.smoke else (args.events, args.users)

    sys.path.insert(0, str(REPO))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["TASKSTATE_TEST_SERVICES"] = "1"
    import django

    django.setup()
    import redis
    from django.conf import settings

    from taskstate.web import courier as courier_module
    from taskstate.web import publish
    from taskstate.web.channels import user_channel
    from tests.support.drain import flush

    if args.smoke:
        courier_module.MAX_PENDING = 1_000
    client = redis.Redis(**settings.EVENTSTREAM_REDIS)
    pubsub = client.pubsub()
    pubsub.subscribe("events_channel")
    pubsub.get_message(timeout=1)

    opened = threading.Event()
    courier_module.courier.submit(lambda: opened.wait(60))
    began = time.monotonic()
    for n in range(events):
        publish.publish_removed(1_000_000 + n % users, [n])
    handed = time.monotonic() - began
    opened.set()
    drained_from = time.monotonic()
    assert flush(120), "the sender did not drain"
    drained = time.monotonic() - drained_from

    received: Counter[tuple[str, str]] = Counter()
    while message := pubsub.get_message(timeout=1.0):
        if message["type"] == "message":
            item = json.loads(message["data"])
            received[(item["channel"], item["event_type"] or "row")] += 1
    pubsub.close()
    client.close()

    channels = {user_channel(1_000_000 + u) for u in range(users)}
    rows = sum(c for (ch, kind), c in received.items() if kind == "row" and ch in channels)
    resets = Counter(
        ch for (ch, kind), c in received.items() if kind == "stream-reset" and ch in channels
    )
    print(f"{events:,} events for {users} users, MAX_PENDING {courier_module.MAX_PENDING:,}\n")
    print("| handed over in | drained in | sent | dropped | channels reset | resets each |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| {handed:.2f} s | {drained:.2f} s | {rows:,} | {events - rows:,} | "
        f"{len(resets)}/{users} | {sorted(set(resets.values()))} |"
    )
    assert set(resets) == channels, "every user who lost an event was reset"
    assert set(resets.values()) == {1}, "once each"


if __name__ == "__main__":
    main()
