"""Settings for the test suite.

Without services (a fresh clone): SQLite in a file and Dramatiq's StubBroker with an
in-process worker. With ``TASKSTATE_TEST_SERVICES=1`` (CI): PostgreSQL and Redis on
loopback, and the integration tests start real ``rundramatiq`` and uvicorn processes.
"""

import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SERVICES = os.environ.get("TASKSTATE_TEST_SERVICES") == "1"

# Under pytest-xdist (``-n 2``), each worker takes Redis databases of its own, eight
# numbers on from the suite's: a worker process started by one pytest worker never takes
# the other's messages. Done once, in the environment, so that the processes a test
# starts (which inherit it, marker included) use the same databases.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if (
    SERVICES
    and _XDIST_WORKER.startswith("gw")
    and os.environ.get("TASKSTATE_TEST_REDIS_SHIFTED") != _XDIST_WORKER
):
    for _key, _default in (
        ("TASKSTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
        ("TASKSTATE_TEST_DEMO_REDIS_URL", "redis://127.0.0.1:6379/13"),
    ):
        _parts = urlsplit(os.environ.get(_key, _default))
        _db = (int(_parts.path.lstrip("/") or 0) + 8 * int(_XDIST_WORKER[2:])) % 16
        os.environ[_key] = urlunsplit(_parts._replace(path=f"/{_db}"))
    os.environ["TASKSTATE_TEST_REDIS_SHIFTED"] = _XDIST_WORKER
BASE_DIR = Path(__file__).resolve().parent.parent

# TASKSTATE_TEST_SECRET_KEY: a second site in tests/integration/test_two_sites.py.
SECRET_KEY = os.environ.get(
    "TASKSTATE_TEST_SECRET_KEY", "taskstate-tests-not-secret-but-long-enough-for-hs256"
)
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "/static/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_dramatiq",
    "django_eventstream",
    "django_htmx",
    "taskstate",
    "tests.testapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DRAMATIQ_MIDDLEWARE = [
    "dramatiq.middleware.AgeLimit",
    "dramatiq.middleware.TimeLimit",
    "dramatiq.middleware.Callbacks",
    "dramatiq.middleware.Retries",
    "dramatiq.middleware.Pipelines",
    "django_dramatiq.middleware.DbConnectionsMiddleware",
    "taskstate.middleware.StateMiddleware",
]
# Without services: Dramatiq's in-memory broker, worked by an in-process worker.
STUB_BROKER = {
    "BROKER": "dramatiq.brokers.stub.StubBroker",
    "OPTIONS": {},
    "MIDDLEWARE": DRAMATIQ_MIDDLEWARE,
}

if SERVICES:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("TASKSTATE_TEST_DB_NAME", "test"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "TEST": {"NAME": f"test_taskstate_{os.getpid()}"},
        }
    }
    if os.environ.get("TASKSTATE_TEST_DB_NAME"):
        # A worker or server process started by a test: use the test database as is.
        DATABASES["default"]["TEST"] = {"NAME": os.environ["TASKSTATE_TEST_DB_NAME"]}
    REDIS_URL = os.environ.get("TASKSTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    if os.environ.get("TASKSTATE_TEST_ABORT") == "1":
        # A worker for the hard-cancel tests: dramatiq-abort's middleware, on the same Redis.
        DRAMATIQ_MIDDLEWARE = [*DRAMATIQ_MIDDLEWARE, "tests.testapp.abort.TestAbortable"]
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.redis.RedisBroker",
        # TASKSTATE_TEST_BROKER_OPTIONS: more RedisBroker options, as JSON (fault tests).
        "OPTIONS": {
            "url": REDIS_URL,
            **json.loads(os.environ.get("TASKSTATE_TEST_BROKER_OPTIONS") or "{}"),
        },
        "MIDDLEWARE": DRAMATIQ_MIDDLEWARE,
    }
    _redis = urlsplit(REDIS_URL)
    EVENTSTREAM_REDIS = {
        "host": _redis.hostname or "127.0.0.1",
        "port": _redis.port or 6379,
        "db": int(_redis.path.lstrip("/") or 0),
    }
elif os.environ.get("TASKSTATE_TEST_DB") == "mariadb":
    # The portability pass: MariaDB on loopback, StubBroker as for SQLite.
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": "test",
            "USER": "root",
            "HOST": "127.0.0.1",
            "PORT": "3306",
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {"NAME": f"test_taskstate_{os.getpid()}", "CHARSET": "utf8mb4"},
        }
    }
    DRAMATIQ_BROKER = STUB_BROKER
else:
    _db_dir = Path(os.environ.get("TASKSTATE_TEST_SQLITE_DIR", tempfile.gettempdir()))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(_db_dir / "taskstate-tests.sqlite3"),
            # A file, not memory: the in-process worker's threads have connections of
            # their own and must see what the test committed.
            "TEST": {"NAME": str(_db_dir / f"taskstate-test-{os.getpid()}.sqlite3")},
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    }
    DRAMATIQ_BROKER = STUB_BROKER

# django.tasks (Django >= 6): taskstate's backend, on the broker above (tests/test_backends.py).
TASKS = {
    "default": {
        "BACKEND": "taskstate.backends.DramatiqBackend",
        "QUEUES": ["default", "low"],
    }
}

TASKSTATE = {
    "PROGRESS_INTERVAL": 0.5,
    # TASKSTATE_TEST_SETTINGS: more TASKSTATE keys, as JSON (for processes a test starts).
    **json.loads(os.environ.get("TASKSTATE_TEST_SETTINGS") or "{}"),
}
# TASKSTATE_TEST_CONSTANTS: values for taskstate.core.conf's constants, as JSON (for processes a
# test starts).
if _constants := json.loads(os.environ.get("TASKSTATE_TEST_CONSTANTS") or "{}"):
    from taskstate.core import conf as _conf

    for _name, _value in _constants.items():
        assert hasattr(_conf, _name), _name
        setattr(_conf, _name, _value)
EVENTSTREAM_CHANNELMANAGER_CLASS = "taskstate.channels.TaskstateChannelManager"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"taskstate": {"handlers": ["console"], "level": "WARNING"}},
}

# --- GRIP (Pushpin) ---
# With TASKSTATE_TEST_GRIP_URL (tests/integration/test_pushpin.py sets it for the uvicorn
# and rundramatiq processes it starts), django-eventstream answers proxied stream requests
# with GRIP hold instructions and publishes every event to Pushpin's control port. The
# URL carries ``key`` (Pushpin's sig_key) and ``verify-iss`` so that only requests Pushpin
# signed count as proxied. EVENTSTREAM_REDIS stays: send_event publishes to Redis *and* to
# Pushpin, so a stream opened straight on uvicorn (not through Pushpin) still gets worker
# events.
if os.environ.get("TASKSTATE_TEST_GRIP_URL"):
    GRIP_URL = os.environ["TASKSTATE_TEST_GRIP_URL"]
    # First: its process_response then runs last, after every other middleware.
    MIDDLEWARE = ["django_grip.GripMiddleware"] + [
        m for m in MIDDLEWARE if m != "django_grip.GripMiddleware"
    ]
# --- end GRIP ---
