"""Demo customers and communications for `make run` (sent through the console email backend
by the task cluster, so the pipeline can be watched end to end)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from documents.models import Template
from notifications import services

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
]

# (template, customer, idempotency key): each a real request through the pipeline.
REQUESTS = [
    ("monthly_statement", "NW-2048-7731", "demo-statement-1"),
    ("payment_reminder", "NW-2048-7731", "demo-reminder-1"),
    ("policy_renewal", "NW-2048-7731", "demo-renewal-1"),
    ("monthly_statement", "NW-3310-0042", "demo-statement-2"),
    ("final_demand", "NW-5521-9001", "demo-demand-1"),
]


def seed_customers_and_communications() -> None:
    integrator = get_user_model().objects.get(username="integrator")
    customers = {}
    for spec in CUSTOMERS:
        customer, _ = services.customer_upsert(**spec, by=integrator)
        customers[customer.external_ref] = customer
    for code, ref, key in REQUESTS:
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
        )
