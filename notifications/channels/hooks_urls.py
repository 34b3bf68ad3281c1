"""Provider webhooks (public, each authenticated by the provider's signature), mounted by the
root urls at /hooks/; and Anymail's tracking endpoints, mounted at /anymail/ for the configured
ESPs only (`tracking_urls`)."""

from __future__ import annotations

from django.conf import settings
from django.urls import URLPattern, URLResolver, path
from django.urls.resolvers import RoutePattern

from notifications.channels import sms_feedback as sms

urlpatterns = [
    path("sms/twilio/status", sms.twilio_status, name="hooks-sms-twilio-status"),
    path("sms/twilio/inbound", sms.twilio_inbound, name="hooks-sms-twilio-inbound"),
]


class _TrackingResolver(URLResolver):
    """Anymail's tracking endpoints of the ESPs in settings.CCM_TRACKING_ESPS, read on each
    lookup (a filter of a dozen patterns), so that what is mounted always follows the settings.
    Inbound-mail endpoints are never mounted: CCM reads replies from the Gmail mailbox."""

    @property  # type: ignore[override]
    def url_patterns(self) -> list[URLPattern | URLResolver]:
        from anymail import urls as anymail_urls

        prefixes = tuple(f"{esp}/" for esp in settings.CCM_TRACKING_ESPS)
        return [
            pattern
            for pattern in anymail_urls.urlpatterns
            if isinstance(pattern, URLPattern)
            and str(pattern.pattern).startswith(prefixes)
            and (pattern.name or "").endswith(("_tracking_webhook", "mandrill_webhook"))
        ]


def tracking_path(route: str) -> URLResolver:
    """`path(route, include(...))` for the configured ESPs' tracking webhooks."""
    return _TrackingResolver(
        RoutePattern(route, is_endpoint=False), "anymail", app_name="anymail", namespace="anymail"
    )
