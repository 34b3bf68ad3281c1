from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from ccm import review, views
from notifications.channels import hooks_urls, unsubscribe
from notifications.reporting import metrics

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("notices/", views.notice_list, name="notices"),
    path("notices/<int:pk>/open/", views.notice_open, name="notice-open"),
    path("review/", review.queue, name="review-queue"),
    path("review/<int:pk>/", review.approval_review, name="review-approval"),
    path("cases/", include("cases.web.urls")),
    path("customers/", include("cases.web.customer_urls")),
    path("jobs/", include("notifications.jobs.urls")),
    path("templates/", include("documents.web_urls")),
    path("ops/", include("notifications.reporting.urls")),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("ccm.api.urls")),
    path("api/v1/", include("documents.urls")),
    path("api/v1/", include("notifications.urls")),
    path("api/v1/", include("notifications.campaigns.urls")),
    path("campaigns/", include("notifications.campaigns.web_urls")),
    path("statements/", include("notifications.statements.web_urls")),
    path("api/v1/", include("cases.urls")),
    path("api/v1/", include("cases.requests.api")),
    path("api/v1/", include("cases.incidents.urls")),
    path("incidents/", include("cases.incidents.web_urls")),
    path("agent/", include("cases.requests.urls")),
    hooks_urls.tracking_path("anymail/"),
    path("p/", include("notifications.channels.portal_urls")),
    path("u/<str:token>/", unsubscribe.unsubscribe_view, name="unsubscribe"),
    path("hooks/", include("notifications.channels.hooks_urls")),
]

handler404 = "ccm.views.not_found"
handler500 = "ccm.views.server_error"
