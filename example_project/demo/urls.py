from django.urls import path

from demo import views

app_name = "demo"

urlpatterns = [
    path("", views.index, name="index"),
    path("json/", views.json_page, name="json"),
    path("start/<slug:key>/", views.start, name="start"),
    path("reports/<int:number>.csv", views.report, name="report"),
]
