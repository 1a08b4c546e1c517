from django.urls import path

from taskstate import views

app_name = "taskstate"

urlpatterns = [
    path("events/", views.events, name="events"),
    path("list/", views.task_list, name="list"),
    path("seen/<int:pk>/", views.seen, name="seen"),
    path("seen/", views.seen_all, name="seen-all"),
    path("children/<int:pk>/", views.children, name="children"),
]
