from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskstate.core.models import Task


class Command(BaseCommand):
    help = "Delete every taskstate Task row."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

    def handle(self, *args: Any, **options: Any) -> None:
        count = Task.objects.count()
        if count == 0:
            self.stdout.write("No tasks to delete.")
            return
        if not options["yes"]:
            if not sys.stdin or not sys.stdin.isatty():
                raise CommandError(
                    f"Refusing to delete {count} tasks without confirmation: run with --yes."
                )
            answer = input(f"Delete all {count} tasks? Type 'yes' to confirm: ")
            if answer.strip().lower() != "yes":
                self.stdout.write("Nothing deleted.")
                return
        deleted, _ = Task.objects.all().delete()
        self.stdout.write(self.style.SUCCESS(f"Deleted {deleted} tasks."))
