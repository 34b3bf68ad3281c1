from __future__ import annotations

from django.urls import path

from notifications import api, device_api, webhooks_api

urlpatterns = [
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
        "communications/<int:pk>",
        api.CommunicationDetailView.as_view(),
        name="api-communication",
    ),
    path(
        "communications/<int:pk>/cancel",
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
]
