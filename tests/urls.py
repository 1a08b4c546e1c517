from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/logout/", LogoutView.as_view(), name="logout"),
    path("taskstate/", include("taskstate.urls")),
]
