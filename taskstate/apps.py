from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TaskstateConfig(AppConfig):
    name = "taskstate"
    label = "taskstate"
    verbose_name = _("Task state")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        import atexit

        from django.apps import apps
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out
        from django.core.signals import request_started
        from django.db.models.signals import post_save
        from django.test.signals import setting_changed

        from taskstate import checks, logfilters, shutdown  # importing checks registers them
        from taskstate.core import diagnostics, signals
        from taskstate.web import publish, streams
        from taskstate.worker.middleware import StateMiddleware

        # uvicorn runs no system check: the first request logs what they would say.
        request_started.connect(checks.log_setup_problems, dispatch_uid="taskstate.checks.log")
        setting_changed.connect(checks.forget_logged_setup, dispatch_uid="taskstate.checks.forget")
        if apps.is_installed("django_dramatiq"):
            import dramatiq.broker

            # A send with for_state to a broker without StateMiddleware is logged. Only a
            # broker django_dramatiq has set up: get_broker() would make one.
            diagnostics.watch_sends(dramatiq.broker.global_broker)

        logfilters.install()

        # Streams end with their session: at once on logout and on deactivation.
        user_logged_out.connect(streams.on_logged_out, dispatch_uid="taskstate.web.streams.logout")
        post_save.connect(
            streams.on_user_saved,
            sender=get_user_model(),
            dispatch_uid="taskstate.web.streams.user_saved",
        )

        atexit.register(shutdown.at_exit)
        # A worker process may end without running atexit hooks: its worker says when.
        signals.worker_stopped.connect(
            shutdown.on_worker_stopped, dispatch_uid="taskstate.shutdown"
        )

        # task_changed names one sender, whichever part of taskstate wrote the row.
        signals.use_sender(StateMiddleware)

        # The live page follows every committed change; dispatch_uid keeps it to one.
        signals.task_committed.connect(
            publish.on_task_committed, dispatch_uid="taskstate.web.publish.task"
        )
        signals.progress_committed.connect(
            publish.on_progress_committed, dispatch_uid="taskstate.web.publish.progress"
        )

        if apps.is_installed("django_eventstream"):
            from taskstate.web import eventstream_repair

            eventstream_repair.install()
