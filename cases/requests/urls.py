"""The agents' reprint and correspondence screens, mounted at /agent/."""

from __future__ import annotations

from django.urls import path

from cases.requests import views

urlpatterns = [
    path("requests/", views.requests_list, name="agent-requests"),
    path("reprints/new/", views.reprint_new, name="agent-reprint-new"),
    path("reprints/<int:pk>/", views.reprint_detail, name="agent-reprint"),
    path(
        "reprints/<int:pk>/duplicate.pdf",
        views.reprint_duplicate_pdf,
        name="agent-reprint-duplicate",
    ),
    path(
        "reprints/<int:pk>/original.pdf", views.reprint_original_pdf, name="agent-reprint-original"
    ),
    path("correspondence/new/", views.correspondence_new, name="agent-correspondence-new"),
    path("correspondence/<int:pk>/", views.correspondence_detail, name="agent-correspondence"),
    path(
        "correspondence/<int:pk>/letter.pdf",
        views.correspondence_letter_pdf,
        name="agent-correspondence-letter",
    ),
]
