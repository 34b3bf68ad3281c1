"""The back-office's send job screens, mounted at /jobs/ (see notifications/jobs/views.py)."""

from __future__ import annotations

from django.urls import path

from notifications.jobs import views

urlpatterns = [
    path("", views.job_list, name="jobs-list"),
    path("new/", views.job_new, name="jobs-new"),
    path("<int:pk>/", views.job_detail, name="jobs-detail"),
    path("<int:pk>/send/", views.job_send, name="jobs-send"),
    path("<int:pk>/cancel/", views.job_cancel, name="jobs-cancel"),
    path("<int:pk>/progress.json", views.job_progress, name="jobs-progress"),
]
