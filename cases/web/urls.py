"""The agent and operations case screens, mounted at /cases/ (see cases/web/views.py)."""

from __future__ import annotations

from django.urls import path

from cases.web import exceptions as web_exceptions
from cases.web import open as web_open
from cases.web import views as web

urlpatterns = [
    path("", web.queue, name="cases-queue"),
    path("exceptions/", web_exceptions.exception_queue, name="cases-exceptions"),
    path("new/", web_open.case_new, name="cases-new"),
    path("<str:ref>/", web.case_detail, name="cases-detail"),
    path("<str:ref>/do/<str:action>/", web.case_action, name="cases-action"),
    path("<str:ref>/notes/", web.note_add, name="cases-note-add"),
    path("<str:ref>/attachments/", web.attachment_add, name="cases-attachment-add"),
    path(
        "<str:ref>/attachments/<int:pk>/",
        web.attachment_download,
        name="cases-attachment",
    ),
    path(
        "<str:ref>/milestones/<str:code>/reach/",
        web.milestone_reach,
        name="cases-milestone-reach",
    ),
    path("<str:ref>/regenerate/", web_exceptions.regenerate, name="cases-regenerate"),
    path("<str:ref>/resend/", web_exceptions.resend, name="cases-resend"),
]
