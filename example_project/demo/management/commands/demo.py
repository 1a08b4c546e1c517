"""``manage.py demo``: the whole demo in one process.

Migrates, creates the demo logins, starts a Dramatiq worker in this process (when the
broker is the in-memory StubBroker, which no other process can reach), runs the taskstate
cleanup with APScheduler and serves the ASGI application with uvicorn.
"""

from __future__ import annotations

import signal
import socket
from datetime import datetime, timezone
from types import FrameType
from typing import Any

import dramatiq
import uvicorn
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from dramatiq.brokers.stub import StubBroker

LOGINS = (("demo", "demo", False), ("admin", "admin", True))


class _Stop(Exception):
    """SIGTERM, turned into an exception so that the cleanup in ``handle()`` runs."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


class _Server(uvicorn.Server):
    """uvicorn's server, but event streams do not hold up the shutdown.

    An SSE response never ends by itself, so uvicorn would wait for it, then cancel it
    with an error. Closing the connections first lets Django see a client disconnect
    and end each stream cleanly.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for connection in list(self.server_state.connections):
            connection.transport.close()
        await super().shutdown(sockets=sockets)


class Command(BaseCommand):
    help = "Run the taskstate demo: migrate, create logins, start a worker and serve the site."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address to bind.")
        parser.add_argument("--port", type=int, default=8000, help="Port to listen on.")
        worker = parser.add_mutually_exclusive_group()
        worker.add_argument(
            "--no-worker",
            action="store_true",
            help="Do not run a Dramatiq worker here (run `manage.py rundramatiq` instead).",
        )
        worker.add_argument(
            "--worker",
            action="store_true",
            help="Run a Dramatiq worker here even when the broker is not the StubBroker.",
        )
        parser.add_argument(
            "--threads", type=int, default=8, help="Threads of the in-process worker."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        from demo import tasks  # noqa: F401  (actors declared before the worker starts)
        from taskstate.scheduler import add_cleanup_job

        host, port = options["host"], options["port"]
        # Before anything is printed: a banner and logins followed by "address already
        # in use" reads as if the demo were serving.
        problem = _bind_problem(host, port)
        if problem:
            raise CommandError(
                f"Cannot listen on {host}:{port}: {problem}. Another server is probably "
                f"running there; pick another port, e.g. --port {port + 1}."
            )

        call_command("migrate", interactive=False, verbosity=0)
        self._create_logins()

        broker = dramatiq.get_broker()
        embedded = isinstance(broker, StubBroker)
        run_worker = options["worker"] or (embedded and not options["no_worker"])
        if embedded and not run_worker:
            self.stderr.write(
                self.style.WARNING(
                    "The StubBroker lives in this process only: without a worker here, "
                    "tasks stay enqueued."
                )
            )

        server = _Server(
            uvicorn.Config(
                "demo_site.asgi:application",
                host=host,
                port=port,
                log_level="warning",
                lifespan="off",
                timeout_graceful_shutdown=5,
            )
        )

        previous_sigterm = signal.signal(signal.SIGTERM, _raise_stop)
        worker: dramatiq.Worker | None = None
        scheduler = BackgroundScheduler()
        try:
            if run_worker:
                # A short poll timeout only makes the worker quicker to stop.
                worker = dramatiq.Worker(
                    broker, worker_threads=options["threads"], worker_timeout=200
                )
                worker.start()
            # First run now: tasks left running by a previous demo that was stopped.
            add_cleanup_job(scheduler, next_run_time=datetime.now(tz=timezone.utc))
            scheduler.start()
            self._announce(host, port, broker, worker)
            # uvicorn handles Ctrl+C and SIGTERM itself, then re-raises the signal once
            # it has stopped: KeyboardInterrupt or _Stop, caught below.
            server.run()
        except (KeyboardInterrupt, _Stop):
            pass
        finally:
            self.stdout.write("Stopping…")
            if scheduler.running:
                scheduler.shutdown(wait=False)
            if worker is not None:
                # Running tasks get a few seconds; the cleanup fails those left behind.
                self.stdout.write("Waiting up to 5 s for running tasks…")
                worker.stop(timeout=5_000)
            signal.signal(signal.SIGTERM, previous_sigterm)
            self.stdout.write("Stopped.")

    def _create_logins(self) -> None:
        users = get_user_model()
        for username, password, is_superuser in LOGINS:
            if users.objects.filter(username=username).exists():
                continue
            if is_superuser:
                users.objects.create_superuser(username, f"{username}@example.com", password)
            else:
                users.objects.create_user(username, password=password)
            self.stdout.write(f"Created user {username!r}.")

    def _announce(
        self, host: str, port: int, broker: dramatiq.Broker, worker: dramatiq.Worker | None
    ) -> None:
        shown_host = f"[{host}]" if ":" in host else host
        worker_text = (
            f"in this process ({worker.worker_threads} threads)"
            if worker is not None
            else "none here: run `manage.py rundramatiq`"
        )
        lines = [
            "",
            self.style.SUCCESS(f"  taskstate demo: http://{shown_host}:{port}/"),
            "",
            "  Log in as   demo  / demo    (the demo page)",
            "          or  admin / admin   (also the admin at /admin/)",
            "",
            f"  Broker: {type(broker).__name__}; worker: {worker_text}",
            "  Press Ctrl+C to stop.",
            "",
        ]
        self.stdout.write("\n".join(lines))


def _bind_problem(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on ``host:port`` (as it binds it), or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return str(exc)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None
