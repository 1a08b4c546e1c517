"""Settings of the dramatiq-taskstate demo site.

Embedded by default: SQLite in ``example_project/db.sqlite3``, Dramatiq's StubBroker with
a worker inside the web process (``manage.py demo``), django-eventstream in-process.

Production-style when the environment says so:

- ``DATABASE_URL=postgres://user[:password]@host[:port]/name`` selects PostgreSQL;
- ``REDIS_URL=redis://[:password@]host[:port][/db]`` selects Dramatiq's RedisBroker and
  makes django-eventstream publish over the same Redis, so that events sent by a separate
  ``rundramatiq`` process reach the browsers connected to the web process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import django

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def database_from_url(url: str) -> dict[str, Any]:
    """A ``DATABASES`` entry for ``postgres://user:password@host:port/name``."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"DATABASE_URL must be a postgres:// URL, not {parts.scheme!r}")
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ValueError("DATABASE_URL names no database (postgres://user@host:port/NAME)")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


def redis_connection_from_url(url: str) -> dict[str, Any]:
    """``redis.Redis(**kwargs)`` arguments for ``redis://[:password@]host[:port][/db]``."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"REDIS_URL must be a redis:// URL, not {parts.scheme!r}")
    db = parts.path.lstrip("/")
    connection: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": int(db) if db else 0,
    }
    if parts.username:
        connection["username"] = unquote(parts.username)
    if parts.password:
        connection["password"] = unquote(parts.password)
    return connection


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "taskstate-demo-not-a-secret")
DEBUG = _env_flag("DJANGO_DEBUG", default=True)
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"] + [
    host for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if host
]

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
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The task list follows the browser's language (Accept-Language); the demo's own
    # pages stay in English.
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

if django.VERSION >= (6, 0):
    # A strict Content Security Policy with Django 6's own middleware: no inline script
    # or style runs without the page's nonce; {% taskstate_scripts %} puts it on its tags.
    from django.utils.csp import CSP

    MIDDLEWARE.append("django.middleware.csp.ContentSecurityPolicyMiddleware")
    SECURE_CSP = {
        "default-src": [CSP.SELF],
        "script-src": [CSP.SELF, CSP.NONCE],
        "style-src": [CSP.SELF, CSP.NONCE],
        "img-src": [CSP.SELF, "data:"],
        "connect-src": [CSP.SELF],
        "object-src": [CSP.NONE],
        "base-uri": [CSP.NONE],
        "frame-ancestors": [CSP.NONE],
    }

ROOT_URLCONF = "demo_site.urls"
ASGI_APPLICATION = "demo_site.asgi.application"

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

DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DEMO_SQLITE_PATH") or BASE_DIR / "db.sqlite3",
            # The embedded worker's threads write while web requests read and write:
            # WAL lets readers go on during a write, IMMEDIATE takes the write lock at
            # BEGIN (no lock upgrade deadlock) and the timeout waits for it.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL;",
            },
        }
    }

_DRAMATIQ_MIDDLEWARE = [
    "dramatiq.middleware.AgeLimit",
    "dramatiq.middleware.TimeLimit",
    "dramatiq.middleware.Callbacks",
    "dramatiq.middleware.Retries",
    # Sends each pipeline step once the one before it succeeded (the pipeline demo).
    "dramatiq.middleware.Pipelines",
    # The flaky import reads its message's options (is it sent again from its row?).
    "dramatiq.middleware.CurrentMessage",
    "django_dramatiq.middleware.DbConnectionsMiddleware",
    "taskstate.middleware.StateMiddleware",
]

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.redis.RedisBroker",
        "OPTIONS": {"url": REDIS_URL},
        "MIDDLEWARE": _DRAMATIQ_MIDDLEWARE,
    }
    EVENTSTREAM_REDIS = redis_connection_from_url(REDIS_URL)
else:
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.stub.StubBroker",
        "OPTIONS": {},
        "MIDDLEWARE": _DRAMATIQ_MIDDLEWARE,
    }

# A taskstate channel is served only by taskstate:events, to its owner; django-eventstream's
# own views refuse it.
EVENTSTREAM_CHANNELMANAGER_CLASS = "taskstate.channels.TaskstateChannelManager"

# django.tasks (Django >= 6): @task functions run on the Dramatiq broker above
# (docs/django-tasks.md). Django 5.2 ignores this setting.
TASKS = {"default": {"BACKEND": "taskstate.backends.DramatiqBackend"}}

TASKSTATE = {
    "PROGRESS_INTERVAL": 0.5,
    # A demo that is stopped mid-task should not show it running for an hour.
    "RUNNING_TIMEOUT": 300,
    "CLEANUP_INTERVAL": 60,
}

AUTH_PASSWORD_VALIDATORS: list[dict[str, Any]] = []
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "demo:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
LANGUAGES = [
    ("en", "English"),
    ("fr", "Français"),
    ("de", "Deutsch"),
    ("es", "Español"),
    ("pt-br", "Português (Brasil)"),
]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"results_kept": {"()": "demo_site.log_filters.DropDiscardedResultWarning"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["results_kept"],
        }
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    # dramatiq at INFO: boot, shutdown and retries, not one line per message.
    "loggers": {"taskstate": {"level": "INFO"}, "dramatiq": {"level": "INFO"}},
}
