from __future__ import annotations

from django.urls import path

from notifications.campaigns import views

urlpatterns = [
    path("", views.campaign_list, name="campaign-list"),
    path("new/", views.campaign_create, name="campaign-create"),
    path("segments/new/", views.segment_create, name="segment-create"),
    path("segments/<int:pk>/", views.segment_preview, name="segment-preview"),
    path("<int:pk>/", views.campaign_detail, name="campaign-detail"),
    path("<int:pk>/edit/", views.campaign_edit, name="campaign-edit"),
    path("<int:pk>/progress.json", views.campaign_progress, name="campaign-progress"),
    path("<int:pk>/evidence.zip", views.campaign_evidence, name="campaign-evidence"),
    path("<int:pk>/<str:action>/", views.campaign_action, name="campaign-action"),
]
