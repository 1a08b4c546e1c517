"""Views of the test project that the tests drive."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from tests.testapp import tasks


async def send_from_async_view(request: HttpRequest) -> HttpResponse:
    """An async view (as served by ASGI) that sends a tracked task."""
    user = await request.auser()
    message = tasks.noop.send(for_state={"user_pk": user.pk, "description": "from async"})
    return HttpResponse(message.message_id)


def bare_list_page(request: HttpRequest) -> HttpResponse:
    """The task list in a page with no style of its own (a browser's serif default)."""
    from django.template import engines

    page = engines["django"].from_string(
        '{% load taskstate %}<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Bare page</title>{% taskstate_scripts %}</head>"
        "<body><main><h1>Bare page</h1>{% taskstate_list %}</main></body></html>"
    )
    return HttpResponse(page.render({}, request))


def group_page(request: HttpRequest, pk: int) -> HttpResponse:
    """A group's page with the live list of the tasks about it."""
    from django.contrib.auth.models import Group
    from django.shortcuts import get_object_or_404
    from django.template import engines

    page = engines["django"].from_string(
        '{% load taskstate %}<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>{{ group.name }}</title>{% taskstate_scripts %}</head>"
        "<body><main><h1>{{ group.name }}</h1>{% taskstate_list for=group %}</main></body></html>"
    )
    group = get_object_or_404(Group, pk=pk)
    return HttpResponse(page.render({"group": group}, request))
