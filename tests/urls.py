from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path

from tests.testapp.views import send_from_async_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/logout/", LogoutView.as_view(), name="logout"),
    path("taskstate/", include("taskstate.urls")),
    path("send-async/", send_from_async_view),
]
