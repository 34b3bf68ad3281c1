"""Which email service providers (ESPs) may post tracking events, and how each proves it.

Settings import this module (it imports nothing of Django's apps): the tracking endpoints are
mounted only for the ESPs CCM sends through, and production refuses to start when such an
ESP signs its webhooks but its signing key is not configured. An endpoint of an ESP we do not
use would take a forged hard bounce (suppressing an address, starting a print fallback) from
anyone who knows the basic-auth secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Anymail's ESPs by their module name (anymail.backends.<esp>, the first part of its webhook
# path), with the ANYMAIL settings that hold the key their tracking webhooks are verified with
# (empty: the ESP does not sign them; the basic auth of ANYMAIL_WEBHOOK_SECRET is all there is).
TRACKING_SIGNING_KEYS: dict[str, tuple[str, ...]] = {
    "amazon_ses": (),
    "brevo": (),
    "mailersend": ("MAILERSEND_SIGNING_SECRET",),
    "mailgun": ("MAILGUN_WEBHOOK_SIGNING_KEY",),
    "mailjet": (),
    "mailtrap": ("MAILTRAP_TRACKING_SECRET",),
    "mandrill": ("MANDRILL_WEBHOOK_KEY",),
    "postal": ("POSTAL_WEBHOOK_KEY",),
    "postmark": (),
    "resend": ("RESEND_SIGNING_SECRET",),
    "sendgrid": ("SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY",),
    "sendinblue": (),
    "sparkpost": (),
    "unisender_go": ("UNISENDER_GO_API_KEY",),
}

_ANYMAIL_BACKEND_RE = re.compile(r"^anymail\.backends\.(\w+)\.")


class UnknownEsp(ValueError):
    pass


def tracking_esps(*, email_backend: str, explicit: Iterable[str] = ()) -> list[str]:
    """The ESPs whose tracking webhooks are mounted: those listed in CCM_TRACKING_ESPS, else
    the one EMAIL_BACKEND sends through (none for the console, SMTP or test backends)."""
    chosen = [esp.strip().lower() for esp in explicit if esp.strip()]
    if not chosen:
        match = _ANYMAIL_BACKEND_RE.match(email_backend)
        chosen = [match.group(1)] if match and match.group(1) in TRACKING_SIGNING_KEYS else []
    unknown = sorted(set(chosen) - set(TRACKING_SIGNING_KEYS))
    if unknown:
        raise UnknownEsp(
            f"Unknown ESP(s) in CCM_TRACKING_ESPS: {', '.join(unknown)}. "
            f"Known: {', '.join(TRACKING_SIGNING_KEYS)}."
        )
    return list(dict.fromkeys(chosen))


def signing_keys(esps: Iterable[str]) -> list[str]:
    """The ANYMAIL settings that must hold a key for these ESPs' webhooks to be verified."""
    return [key for esp in esps for key in TRACKING_SIGNING_KEYS[esp]]
