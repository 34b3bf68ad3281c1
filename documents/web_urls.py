"""The template authors' screens, mounted at /templates/ (see documents/web.py)."""

from __future__ import annotations

from django.urls import path

from documents import web

urlpatterns = [
    path("", web.library, name="authoring-library"),
    path("new/", web.template_new, name="authoring-new"),
    path("versions/<int:pk>/", web.version_edit, name="authoring-edit"),
    path("versions/<int:pk>/submit/", web.version_submit, name="authoring-submit"),
    path("versions/<int:pk>/reopen/", web.version_reopen, name="authoring-reopen"),
    path("versions/<int:pk>/publish/", web.version_publish, name="authoring-publish"),
    path("preview/<str:token>/proof.pdf", web.preview_pdf, name="authoring-preview-pdf"),
    path("preview/<str:token>/email.html", web.preview_email, name="authoring-preview-email"),
    path("<slug:code>/", web.template_detail, name="authoring-template"),
    path("<slug:code>/draft/", web.draft_new, name="authoring-draft-new"),
]
