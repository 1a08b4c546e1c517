from __future__ import annotations

import signal
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from taskstate.cleanup import cleanup
from taskstate.core.conf import get_settings
from taskstate.scheduler import add_cleanup_job


class Command(BaseCommand):
    help = "Run the taskstate cleanup every TASKSTATE['CLEANUP_INTERVAL'] seconds (APScheduler)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=float, help="Seconds between runs.")
        parser.add_argument("--once", action="store_true", help="Run the cleanup once and exit.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["once"]:
            # This thread's connection is the caller's: no close_old_connections() here.
            cleanup()
            self.stdout.write("taskstate cleanup done.")
            return
        from apscheduler.schedulers.blocking import BlockingScheduler

        interval = options["interval"] or get_settings().CLEANUP_INTERVAL
        scheduler = BlockingScheduler()
        add_cleanup_job(scheduler, seconds=interval)
        self.stdout.write(f"taskstate cleanup every {interval} s; Ctrl+C to stop.")
        # systemd, supervisord and `kill` stop a service with SIGTERM: a clean exit, as Ctrl+C.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        try:
            scheduler.start()
        except (KeyboardInterrupt, SystemExit):
            scheduler.shutdown(wait=False)
