"""Routes of the Django example, and its JSON error views."""

from __future__ import annotations

from django.urls import path

from examples.django_app import views

urlpatterns = [
    path("objects", views.upload, name="object-upload"),
    path("objects/<uuid:task_id>", views.object_status, name="object-status"),
    path("objects/<uuid:task_id>/content", views.object_content, name="object-content"),
]

handler400 = "examples.django_app.views.bad_request"
handler404 = "examples.django_app.views.not_found"
handler500 = "examples.django_app.views.server_error"
