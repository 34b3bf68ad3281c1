"""Provider webhooks (public, each authenticated by the provider's signature), mounted by the
root urls at /hooks/."""

from __future__ import annotations

from django.urls import path

from notifications import sms

urlpatterns = [
    path("sms/twilio/status", sms.twilio_status, name="hooks-sms-twilio-status"),
    path("sms/twilio/inbound", sms.twilio_inbound, name="hooks-sms-twilio-inbound"),
]
