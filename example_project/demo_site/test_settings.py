"""Settings for the demo's tests (docs/testing.md, "Settings for a test suite").

The in-process test worker's threads have database connections of their own, so the test
database is a file (SQLite's default test database lives in memory, one per
connection), and the broker is the StubBroker whatever the environment says.
"""

import os
import tempfile
from pathlib import Path

from demo_site.settings import *  # noqa: F403
from demo_site.settings import DATABASES

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # One file per test run, so that runs side by side do not share it.
    DATABASES["default"]["TEST"] = {
        "NAME": str(Path(tempfile.gettempdir()) / f"taskstate-demo-tests-{os.getpid()}.sqlite3")
    }

DRAMATIQ_BROKER = {
    "BROKER": "dramatiq.brokers.stub.StubBroker",
    "OPTIONS": {},
    "MIDDLEWARE": [
        "dramatiq.middleware.AgeLimit",
        "dramatiq.middleware.TimeLimit",
        "dramatiq.middleware.Callbacks",
        "dramatiq.middleware.Retries",
        "dramatiq.middleware.Pipelines",
        # The flaky import reads its message's options (is it sent again from its row?).
        "dramatiq.middleware.CurrentMessage",
        "django_dramatiq.middleware.DbConnectionsMiddleware",
        "taskstate.middleware.StateMiddleware",
    ],
}
# Events stay in this process (record_events sees them all), whatever REDIS_URL says.
globals().pop("EVENTSTREAM_REDIS", None)

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
