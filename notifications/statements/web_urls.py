from __future__ import annotations

from django.urls import path

from notifications.statements import views

urlpatterns = [
    path("", views.run_list, name="statement-runs"),
    path("<int:pk>/", views.run_detail, name="statement-run"),
    path("<int:pk>/<str:action>/", views.run_action, name="statement-run-action"),
    path(
        "statement/<int:pk>/<str:action>/",
        views.statement_action,
        name="statement-action",
    ),
]
