"""Demo customers and communications for `make run`: every channel, sent through the console
backends by the task cluster so the pipeline can be watched end to end — email, SMS (an urgent
reminder), push (an outage notice to a registered phone), print (a customer with only a postal
address: her letter waits in the open print batch, which operations close and download in the
admin) and a fallback (an email address that the ESP refuses falls through to SMS).

Each customer gets their own documents: the request data is a library sample made theirs (their
account number, their supply address); the name, salutation and postal address come from the
customer record, as for any request. The customers' usage statements are not requested here:
a statement run computes them from their meters' readings (notifications/statements/demo.py)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model

from documents.models import Template
from notifications.customers import services as customer_services
from notifications.customers.devices import device_register
from notifications.pipeline import services

CUSTOMERS: list[dict[str, Any]] = [
    {
        "external_ref": "NW-2048-7731",
        "name": "Ms Eleanor Hartley",
        "salutation": "Ms Hartley",
        "postal_address": ["14 Larkspur Close", "Headingley", "Leeds", "LS6 3QT"],
        "emails": ["eleanor.hartley@example.com"],
        "phones": ["+447911123456"],
    },
    {
        "external_ref": "NW-3310-0042",
        "name": "Mr Tomasz Nowak",
        "salutation": "Herr Nowak",
        "language": "de",
        "postal_address": ["7 Mill Lane", "York", "YO1 7HH"],
        "emails": ["t.nowak@example.com"],
    },
    {
        "external_ref": "NW-5521-9001",
        "name": "Mrs Priya Raman",
        "salutation": "Mrs Raman",
        "postal_address": ["2 Orchard Row", "Bath", "BA1 1AA"],
    },
    {
        "external_ref": "NW-7410-3300",
        "name": "Mr Daniel Okafor",
        "salutation": "Mr Okafor",
        "postal_address": ["31 Quay Street", "Bristol", "BS1 4DJ"],
        "phones": ["+447400123456"],
    },
]

# A registered phone app, opted in to service messages by push.
DEVICES = [("NW-3310-0042", "android", "demo-fcm-token-tomasz", "northwind-app")]

# (template, sample, customer, idempotency key, urgency, data of this customer's own): each a
# real request through the pipeline.
REQUESTS: list[tuple[str, str, str, str, str, dict[str, Any]]] = [
    ("payment_reminder", "default", "NW-2048-7731", "demo-reminder-1", "normal", {}),
    ("policy_renewal", "default", "NW-2048-7731", "demo-renewal-1", "normal", {}),
    ("final_demand", "default", "NW-5521-9001", "demo-demand-1", "normal", {}),
    ("payment_reminder", "default", "NW-7410-3300", "demo-reminder-sms-1", "high", {}),
    (
        "outage_notice",
        "default",
        "NW-3310-0042",
        "demo-outage-1",
        "high",
        {"outage": {"area": "Mill Lane and part of Skeldergate (YO1 7)"}},
    ),
]

# Fields of the samples that describe where the customer lives or is supplied.
_ADDRESS_FIELDS = ("supply_address", "property_address")


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if nested else value
    return out


def demo_data(sample: dict[str, Any], customer, extra: dict[str, Any]) -> dict[str, Any]:
    """A library sample made `customer`'s: the sample customer's account number becomes
    theirs wherever it appears (a payment link carries it too), addresses become theirs, and
    the sample's `customer` block goes (the pipeline addresses the letter from the record)."""
    data = {k: v for k, v in sample.items() if k not in ("customer", "portal_url")}
    text = json.dumps(data, ensure_ascii=False)
    sample_ref = (sample.get("customer") or {}).get("reference")
    if sample_ref:
        text = text.replace(sample_ref, customer.external_ref)
    data = json.loads(text)
    for field in _ADDRESS_FIELDS:
        if field in data:
            data[field] = ", ".join(customer.postal_address)
    return _merged(data, extra)


def seed_customers_and_communications() -> None:
    integrator = get_user_model().objects.get(username="integrator")
    customers = {}
    for spec in CUSTOMERS:
        customer, _ = customer_services.customer_upsert(**spec, by=integrator)
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
    for code, sample, ref, key, urgency, extra in REQUESTS:
        template = Template.objects.filter(code=code).first()
        version = template.published_version if template else None
        if version is None:
            continue
        customer = customers[ref]
        services.communication_request(
            template_code=code,
            customer=customer,
            data=demo_data(version.content["samples"][sample], customer, extra),
            client="demo",
            by=integrator,
            idempotency_key=key,
            source="api",
            urgency=urgency,
        )
