from __future__ import annotations

from django.urls import path

from notifications import api, device_api

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
]
