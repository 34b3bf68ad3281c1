from __future__ import annotations

from django.urls import path

from cases.incidents import web

urlpatterns = [
    path("", web.incident_list, name="incident-list"),
    path("maintenance", web.maintenance_schedule, name="incident-maintenance"),
    path("<str:ref>/", web.incident_detail, name="incident-detail"),
    path("<str:ref>/action", web.incident_action, name="incident-action"),
]
