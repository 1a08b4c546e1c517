from django.urls import path

from taskstate.web import json_views, views

app_name = "taskstate"

urlpatterns = [
    path("events/", views.events, name="events"),
    path("list/", views.task_list, name="list"),
    path("seen/<int:pk>/", views.seen, name="seen"),
    path("seen/", views.seen_all, name="seen-all"),
    path("cancel/<int:pk>/", views.cancel, name="cancel"),
    path("retry/<int:pk>/", views.retry, name="retry"),
    path("children/<int:pk>/", views.children, name="children"),
    path("object/<str:token>/events/", views.object_events, name="object-events"),
    path("object/<str:token>/list/", views.object_task_list, name="object-list"),
    # The JSON form (docs/how-to/json.md): the same rules, for pages not built with htmx.
    path("json/events/", views.events, {"form": "json"}, name="json-events"),
    path("json/tasks/", json_views.task_list, name="json-list"),
    path("json/seen/<int:pk>/", json_views.seen, name="json-seen"),
    path("json/seen/", json_views.seen_all, name="json-seen-all"),
    path("json/cancel/<int:pk>/", json_views.cancel, name="json-cancel"),
    path("json/retry/<int:pk>/", json_views.retry, name="json-retry"),
    path(
        "object/<str:token>/json/events/",
        views.object_events,
        {"form": "json"},
        name="json-object-events",
    ),
    path("object/<str:token>/json/tasks/", json_views.object_task_list, name="json-object-list"),
]
