"""Views of the test project that the tests drive."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from tests.testapp import tasks


async def send_from_async_view(request: HttpRequest) -> HttpResponse:
    """An async view (as served by ASGI) that sends a tracked task."""
    user = await request.auser()
    message = tasks.noop.send(for_state={"user_pk": user.pk, "description": "from async"})
    return HttpResponse(message.message_id)
