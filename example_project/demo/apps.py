from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "demo"
    verbose_name = "taskstate demo"

    def ready(self) -> None:
        # Declare the actors on the broker django_dramatiq has just configured, in every
        # process (web, embedded worker, rundramatiq), before any worker starts.
        import django

        from demo import tasks  # noqa: F401

        if django.VERSION >= (6, 0):
            # The django.tasks functions: importing them declares their actors too.
            from demo import jobs  # noqa: F401
