from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("taskstate/", include("taskstate.urls")),
    path("", include("demo.urls")),
]
