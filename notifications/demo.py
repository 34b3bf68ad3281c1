"""Demo customers and communications for `make run`: every channel, sent through the console
backends by the task cluster so the pipeline can be watched end to end — email, SMS (an urgent
reminder), push (an outage notice to a registered phone), print (a customer with only a postal
address: her letter waits in the open print batch, which operations close and download in the
admin) and a fallback (an email address that the ESP refuses falls through to SMS)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from documents.models import Template
from notifications import services
from notifications.devices import device_register

CUSTOMERS: list[dict[str, Any]] = [
    {
        "external_ref": "NW-2048-7731",
        "name": "Ms Eleanor Hartley",
        "postal_address": ["14 Larkspur Close", "Headingley", "Leeds", "LS6 3QT"],
        "emails": ["eleanor.hartley@example.com"],
        "phones": ["+447911123456"],
    },
    {
        "external_ref": "NW-3310-0042",
        "name": "Mr Tomasz Nowak",
        "language": "de",
        "postal_address": ["7 Mill Lane", "York", "YO1 7HH"],
        "emails": ["t.nowak@example.com"],
    },
    {
        "external_ref": "NW-5521-9001",
        "name": "Mrs Priya Raman",
        "postal_address": ["2 Orchard Row", "Bath", "BA1 1AA"],
    },
    {
        "external_ref": "NW-7410-3300",
        "name": "Mr Daniel Okafor",
        "postal_address": ["31 Quay Street", "Bristol", "BS1 4DJ"],
        "phones": ["+447400123456"],
    },
]

# A registered phone app, opted in to service messages by push.
DEVICES = [("NW-3310-0042", "android", "demo-fcm-token-tomasz", "northwind-app")]

# (template, customer, idempotency key[, urgency]): each a real request through the pipeline.
REQUESTS: list[tuple[str, ...]] = [
    ("monthly_statement", "NW-2048-7731", "demo-statement-1"),
    ("payment_reminder", "NW-2048-7731", "demo-reminder-1"),
    ("policy_renewal", "NW-2048-7731", "demo-renewal-1"),
    ("monthly_statement", "NW-3310-0042", "demo-statement-2"),
    ("final_demand", "NW-5521-9001", "demo-demand-1"),
    ("payment_reminder", "NW-7410-3300", "demo-reminder-sms-1", "high"),
    ("outage_notice", "NW-3310-0042", "demo-outage-1", "high"),
]


def seed_customers_and_communications() -> None:
    integrator = get_user_model().objects.get(username="integrator")
    customers = {}
    for spec in CUSTOMERS:
        customer, _ = services.customer_upsert(**spec, by=integrator)
        customers[customer.external_ref] = customer
    for ref, platform, token, app in DEVICES:
        device_register(
            customer=customers[ref],
            platform=platform,
            token=token,
            app=app,
            by=integrator,
            opt_in=True,
            categories=["service"],
        )
    for code, ref, key, *urgency in REQUESTS:
        template = Template.objects.filter(code=code).first()
        version = template.published_version if template else None
        if version is None:
            continue
        data = dict(version.content["samples"]["default"])
        data.pop("portal_url", None)
        services.communication_request(
            template_code=code,
            customer=customers[ref],
            data=data,
            client="demo",
            by=integrator,
            idempotency_key=key,
            source="api",
            urgency=urgency[0] if urgency else "normal",
        )
