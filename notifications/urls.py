from __future__ import annotations

from django.urls import path

from notifications import api
from notifications.channels import printing_api
from notifications.customers import device_api
from notifications.customers.assets import api as assets_api
from notifications.jobs import api as jobs_api
from notifications.reporting import api as reporting_api
from notifications.statements import api as statements_api
from notifications.webhooks import api as webhooks_api

urlpatterns = [
    path("stats", reporting_api.StatsView.as_view(), name="api-stats"),
    path("reports/runs", reporting_api.ReportRunListView.as_view(), name="api-report-runs"),
    path("assets", assets_api.AssetUpsertView.as_view(), name="api-assets"),
    path(
        "service-points",
        assets_api.ServicePointUpsertView.as_view(),
        name="api-service-points",
    ),
    path("readings", statements_api.ReadingsView.as_view(), name="api-readings"),
    path(
        "statement-runs", statements_api.StatementRunListView.as_view(), name="api-statement-runs"
    ),
    path(
        "statement-runs/<int:pk>",
        statements_api.StatementRunView.as_view(),
        name="api-statement-run",
    ),
    path(
        "statement-runs/<int:pk>/<str:action>",
        statements_api.StatementRunActionView.as_view(),
        name="api-statement-run-action",
    ),
    path("customers", api.CustomerUpsertView.as_view(), name="api-customers"),
    path("customers/<str:ref>", api.CustomerDetailView.as_view(), name="api-customer"),
    path("customers/<str:ref>/consents", api.CustomerConsentView.as_view(), name="api-consents"),
    path(
        "customers/<str:ref>/preferences",
        api.CustomerPreferencesView.as_view(),
        name="api-preferences",
    ),
    path(
        "customers/<str:ref>/devices",
        device_api.CustomerDevicesView.as_view(),
        name="api-devices",
    ),
    path(
        "customers/<str:ref>/devices/<int:pk>",
        device_api.CustomerDeviceView.as_view(),
        name="api-device",
    ),
    path("communications", api.CommunicationListCreateView.as_view(), name="api-communications"),
    path(
        "communications/batch",
        jobs_api.CommunicationBatchView.as_view(),
        name="api-communications-batch",
    ),
    path("jobs/<int:pk>", jobs_api.JobDetailView.as_view(), name="api-job"),
    path("jobs/<int:pk>/items", jobs_api.JobItemListView.as_view(), name="api-job-items"),
    path(
        "communications/<uuid:public_id>",
        api.CommunicationDetailView.as_view(),
        name="api-communication",
    ),
    path(
        "communications/<uuid:public_id>/cancel",
        api.CommunicationCancelView.as_view(),
        name="api-communication-cancel",
    ),
    path("webhooks", webhooks_api.WebhookListCreateView.as_view(), name="api-webhooks"),
    path("webhooks/<int:pk>", webhooks_api.WebhookDetailView.as_view(), name="api-webhook"),
    path(
        "webhooks/<int:pk>/deliveries",
        webhooks_api.WebhookDeliveryListView.as_view(),
        name="api-webhook-deliveries",
    ),
    path(
        "webhooks/<int:pk>/deliveries/<int:delivery_id>/replay",
        webhooks_api.WebhookReplayView.as_view(),
        name="api-webhook-replay",
    ),
    path("print-batches", printing_api.PrintBatchListView.as_view(), name="api-print-batches"),
    path(
        "print-batches/<int:pk>",
        printing_api.PrintBatchDetailView.as_view(),
        name="api-print-batch",
    ),
    path(
        "print-batches/<int:pk>/items",
        printing_api.PrintBatchItemsView.as_view(),
        name="api-print-batch-items",
    ),
    path(
        "print-batches/<int:pk>/close",
        printing_api.PrintBatchCloseView.as_view(),
        name="api-print-batch-close",
    ),
    path(
        "print-batches/<int:pk>/hand-over",
        printing_api.PrintBatchHandOverView.as_view(),
        name="api-print-batch-hand-over",
    ),
    path(
        "print-batches/<int:pk>/mailed",
        printing_api.PrintBatchMailedView.as_view(),
        name="api-print-batch-mailed",
    ),
    path(
        "print-batches/<int:pk>/stream",
        printing_api.PrintBatchStreamView.as_view(),
        name="api-print-batch-stream",
    ),
    path(
        "print-batches/<int:pk>/manifest",
        printing_api.PrintBatchManifestView.as_view(),
        name="api-print-batch-manifest",
    ),
    path(
        "print-items/<int:pk>/return",
        printing_api.PrintItemReturnView.as_view(),
        name="api-print-item-return",
    ),
]
