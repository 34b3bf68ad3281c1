from __future__ import annotations

from django.urls import path

from documents import api

urlpatterns = [
    path("templates", api.TemplateListView.as_view(), name="api-templates"),
    path("templates/<slug:code>", api.TemplateDetailView.as_view(), name="api-template"),
    path(
        "templates/<slug:code>/preview",
        api.TemplatePreviewView.as_view(),
        name="api-template-preview",
    ),
    path("documents/<uuid:public_id>", api.DocumentDetailView.as_view(), name="api-document"),
    path("documents/<uuid:public_id>/pdf", api.DocumentPdfView.as_view(), name="api-document-pdf"),
]
