"""ASGI entry point: Server-Sent Events need an async server (uvicorn, daphne).

``uvicorn demo_site.asgi:application --app-dir example_project``
"""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_site.settings")

django_application = get_asgi_application()


def _with_static_files(app: Any) -> Any:
    from django.conf import settings

    if not settings.DEBUG:
        # Run collectstatic and let the web server in front serve STATIC_ROOT.
        return app
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    return ASGIStaticFilesHandler(app)


application = _with_static_files(django_application)
