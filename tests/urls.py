import django_eventstream
import django_eventstream.views
from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path

from tests.testapp.views import bare_list_page, group_page, send_from_async_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/logout/", LogoutView.as_view(), name="logout"),
    path("taskstate/", include("taskstate.urls")),
    path("send-async/", send_from_async_view),
    path("bare/", bare_list_page),
    path("groups/<int:pk>/", group_page),
    # django-eventstream's own views, mounted as a project mounts them next to ours:
    # channels from ``?channel=``, and from the URL.
    path("eventstream/", include(django_eventstream.urls)),
    path("eventstream-channel/<str:channel>/", django_eventstream.views.events),
]
