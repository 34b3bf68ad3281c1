from __future__ import annotations

from django.urls import path

from ccm.api import views

urlpatterns = [
    path("me", views.MeView.as_view(), name="api-me"),
    path("api-keys", views.ApiKeyListCreateView.as_view(), name="api-keys"),
    path("api-keys/<int:pk>/revoke", views.ApiKeyRevokeView.as_view(), name="api-key-revoke"),
    path("approvals", views.ApprovalListView.as_view(), name="api-approvals"),
    path(
        "approvals/<int:pk>/decide", views.ApprovalDecideView.as_view(), name="api-approval-decide"
    ),
]
