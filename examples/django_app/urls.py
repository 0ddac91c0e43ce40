"""Routes of the Django example."""

from __future__ import annotations

from django.urls import path

from examples.django_app import views

urlpatterns = [
    path("objects", views.upload, name="object-upload"),
    path("objects/<uuid:task_id>", views.object_status, name="object-status"),
    path("objects/<uuid:task_id>/content", views.object_content, name="object-content"),
]
