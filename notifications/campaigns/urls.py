from __future__ import annotations

from django.urls import path

from notifications.campaigns import api

urlpatterns = [
    path("segments", api.SegmentListCreateView.as_view(), name="api-segments"),
    path("segments/<int:pk>", api.SegmentDetailView.as_view(), name="api-segment"),
    path("segments/<int:pk>/preview", api.SegmentPreviewView.as_view(), name="api-segment-preview"),
    path("campaigns", api.CampaignListCreateView.as_view(), name="api-campaigns"),
    path("campaigns/<int:pk>", api.CampaignDetailView.as_view(), name="api-campaign"),
    *[
        path(
            f"campaigns/<int:pk>/{action}",
            api.CampaignActionView.as_view(action=action),
            name=f"api-campaign-{action}",
        )
        for action in ("submit", "schedule", "pause", "resume", "cancel")
    ],
    path(
        "campaigns/<int:pk>/progress",
        api.CampaignProgressView.as_view(),
        name="api-campaign-progress",
    ),
    path(
        "campaigns/<int:pk>/evidence",
        api.CampaignEvidenceView.as_view(),
        name="api-campaign-evidence",
    ),
]
