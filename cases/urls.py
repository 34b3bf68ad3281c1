from __future__ import annotations

from django.urls import path

from cases import api

urlpatterns = [
    path("cases", api.CaseListCreateView.as_view(), name="api-cases"),
    path("customers/<str:ref>/erasure", api.CustomerErasureView.as_view(), name="api-erasure"),
    path("cases/<str:ref>", api.CaseDetailView.as_view(), name="api-case"),
    path(
        "cases/<str:ref>/transitions", api.CaseTransitionView.as_view(), name="api-case-transition"
    ),
    path("cases/<str:ref>/notes", api.CaseNoteView.as_view(), name="api-case-notes"),
    path(
        "cases/<str:ref>/milestones/<str:code>/reach",
        api.MilestoneReachView.as_view(),
        name="api-case-milestone-reach",
    ),
    path("cases/<str:ref>/timeline", api.CaseTimelineView.as_view(), name="api-case-timeline"),
    path(
        "cases/<str:ref>/regenerate", api.CaseRegenerateView.as_view(), name="api-case-regenerate"
    ),
    path("cases/<str:ref>/resend", api.CaseResendView.as_view(), name="api-case-resend"),
]
