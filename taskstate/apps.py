from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TaskstateConfig(AppConfig):
    name = "taskstate"
    label = "taskstate"
    verbose_name = _("Task state")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.apps import apps

        from taskstate import (
            checks,  # noqa: F401  (registers the system checks)
            logfilters,
            publish,
            signals,
        )

        # GRIP refresh links carry tokens in their query string: not in access logs.
        logfilters.install()

        # Streams end with their session: at once on logout (this process, the GRIP
        # proxy) and on deactivation (GRIP proxy); the periodic check covers the rest.
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_save

        from taskstate import streams

        user_logged_out.connect(streams.on_logged_out, dispatch_uid="taskstate.streams.logout")
        post_save.connect(
            streams.on_user_saved,
            sender=get_user_model(),
            dispatch_uid="taskstate.streams.user_saved",
        )

        # The live page follows every committed change; dispatch_uid keeps it to one.
        signals.task_committed.connect(
            publish.on_task_committed, dispatch_uid="taskstate.publish.task"
        )
        signals.progress_committed.connect(
            publish.on_progress_committed, dispatch_uid="taskstate.publish.progress"
        )

        if apps.is_installed("django_eventstream"):
            from taskstate import eventstream_repair, presence

            eventstream_repair.install()
            # Streams mark their channels, so rows are rendered only for someone.
            presence.install()
