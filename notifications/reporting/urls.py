from __future__ import annotations

from django.urls import path

from notifications.reporting import views

urlpatterns = [
    path("", views.dashboard, name="reporting-dashboard"),
    path("progress.json", views.progress, name="reporting-progress"),
    path("compliance/", views.compliance, name="reporting-compliance"),
    path("reconciliation/", views.reconciliation, name="reporting-reconciliation"),
    path("items/", views.items, name="reporting-items"),
    path("reports/", views.reports, name="reporting-reports"),
    path("reports/<int:pk>/", views.report_detail, name="reporting-report"),
    path("reports/runs/<int:pk>/<str:fmt>/", views.run_file, name="reporting-run-file"),
]
