"""Communications in chosen states at chosen times, written directly: what rollups, the
dashboard and reconciliation read, without running the pipeline for each one."""

from __future__ import annotations

import itertools
from datetime import datetime

from notifications.models import Communication, Customer, Delivery
from tests.documents.factories import TemplateFactory

_seq = itertools.count(1)


def customer_make() -> Customer:
    n = next(_seq)
    return Customer.objects.create(external_ref=f"R-{n}", name=f"Customer {n}")


def comm_make(
    *,
    at: datetime,
    state: str,
    customer: Customer | None = None,
    template_code: str = "letter",
    category: str = "transactional",
    source: str = "api",
    deliveries: tuple[tuple[str, str], ...] = (),
    sent_after_s: float | None = None,
    failure_reason: str = "",
    last_error: str = "",
    correlation_id: str = "",
) -> Communication:
    """A communication requested at `at` in `state`, with deliveries (channel, state) created
    `sent_after_s` seconds after the request (and sent then, when given)."""
    from datetime import timedelta

    template = TemplateFactory(code=template_code, category=category)
    communication = Communication.objects.create(
        customer=customer or customer_make(),
        template=template,
        data={},
        category=category,
        source=source,
        client="test",
        state=state,
        failure_reason=failure_reason,
        correlation_id=correlation_id,
    )
    Communication.objects.filter(pk=communication.pk).update(created_at=at, updated_at=at)
    for index, (channel, delivery_state) in enumerate(deliveries):
        delivery = Delivery.objects.create(
            communication=communication,
            channel=channel,
            address="someone@example.org",
            state=delivery_state,
            message_id=f"<ccm.{communication.pk}.{index}.{channel}@test>",
            last_error=last_error if delivery_state in ("failed", "bounced") else "",
        )
        when = at + timedelta(seconds=sent_after_s or 1)
        Delivery.objects.filter(pk=delivery.pk).update(
            created_at=when,
            updated_at=when,
            sent_at=when if sent_after_s is not None else None,
        )
    communication.refresh_from_db()
    return communication
