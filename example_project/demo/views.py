from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from demo.actions import ACTIONS


@require_GET
@login_required
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "demo/index.html", {"actions": ACTIONS.values()})


@require_POST
@login_required
def start(request: HttpRequest, key: str) -> HttpResponse:
    """Start one of the sample actors for the logged-in user, then go back to the page."""
    action = ACTIONS.get(key)
    if action is None:
        raise Http404("No such demo action.")
    action.start(request.user.pk)
    if "application/json" in request.headers.get("Accept", ""):
        return HttpResponse(status=204)  # the no-htmx page's script: the row comes live
    messages.success(request, f"Started “{action.label}”.")
    return redirect("demo:json" if request.POST.get("back") == "json" else "demo:index")


@require_GET
@login_required
def json_page(request: HttpRequest) -> HttpResponse:
    """The task list without htmx: a plain script on taskstate's JSON endpoints."""
    return render(request, "demo/json.html", {"actions": ACTIONS.values()})


@require_GET
@login_required
def report(request: HttpRequest, number: int) -> HttpResponse:
    """What a finished "Build a report" links to (its result's ``url``): a small CSV."""
    response = HttpResponse(f"report,number\ndemo,{number}\n", content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="report-{number}.csv"'
    return response
