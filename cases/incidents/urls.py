from __future__ import annotations

from django.urls import path

from cases.incidents import api

urlpatterns = [
    path("events", api.EventIntakeView.as_view(), name="api-events"),
    path("maintenance", api.MaintenanceView.as_view(), name="api-maintenance"),
]
