from django.urls import path

from taskstate import views

app_name = "taskstate"

urlpatterns = [
    path("events/", views.events, name="events"),
    path("list/", views.task_list, name="list"),
    path("seen/<int:pk>/", views.seen, name="seen"),
    path("seen/", views.seen_all, name="seen-all"),
    path("cancel/<int:pk>/", views.cancel, name="cancel"),
    path("retry/<int:pk>/", views.retry, name="retry"),
    path("children/<int:pk>/", views.children, name="children"),
]
