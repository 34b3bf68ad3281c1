from __future__ import annotations

from django.urls import path

from notifications.statements import rule_views, views

urlpatterns = [
    path("", views.run_list, name="statement-runs"),
    path("rules/", rule_views.rule_set_list, name="rule-sets"),
    path("rules/draft/", rule_views.rule_set_draft_new, name="rule-set-draft"),
    path("rules/<int:pk>/", rule_views.rule_set_detail, name="rule-set"),
    path("rules/<int:pk>/submit/", rule_views.rule_set_submit, name="rule-set-submit"),
    path("<int:pk>/", views.run_detail, name="statement-run"),
    path("<int:pk>/<str:action>/", views.run_action, name="statement-run-action"),
    path(
        "statement/<int:pk>/<str:action>/",
        views.statement_action,
        name="statement-action",
    ),
]
