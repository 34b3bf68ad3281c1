"""Events about one customer's device that become a notice to that customer, not an incident:

- field service (`field_service`): an appointment booked, its window moved, the technician on
  the way. Each change is one revision of the `Appointment` and one notice (idempotency key
  `appointment:<reference>:<revision>`); a replayed or older event (by `occurred_at`) and an
  event that changes nothing send nothing;
- usage advisories (`device_wear`): a device whose reported wear reaches the rule's threshold
  gets its customers a maintenance-plan offer. The offer is marketing: whether it may go, and
  on which channel, is the pipeline's one selection and consent check (an opt-in on the
  channel, no opt-out, no suppression), like any campaign's; one offer per device and customer
  a year.

The events come in through `POST /api/v1/events` like any other; intake checks their payload
(a bad one is a 422 naming `payload.<field>`, nothing stored) and names their customer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils.dateparse import parse_datetime

from cases.incidents.models import Appointment, AppointmentStatus, Event
from notifications.customers.assets.models import ServicePoint
from notifications.models import Customer
from notifications.pipeline.intake import communications_intake

CLIENT = "field-service"
FIELD_SERVICE = "field_service"
DEVICE_WEAR = "device_wear"


@dataclass(frozen=True)
class AdvisoryRule:
    """Turns a usage observation into an offer."""

    event_type: str
    threshold: float  # payload["wear"] from 0 to 1
    template: str
    plan: str
    monthly_price: float
    observation: str  # completes "we noticed that …"; {wear} is the percentage
    category: str = "marketing"


ADVISORIES: dict[str, AdvisoryRule] = {
    rule.event_type: rule
    for rule in [
        AdvisoryRule(
            event_type=DEVICE_WEAR,
            threshold=0.8,
            template="maintenance_plan_offer",
            plan="HomeCare maintenance plan",
            monthly_price=12.5,
            observation="its readings show {wear}% of its expected wear",
        )
    ]
}
EVENT_TYPES = {FIELD_SERVICE, *ADVISORIES}


def payload_errors(event_type: str, payload: Any) -> list[dict]:
    """What is wrong with a customer event's payload (each error names `payload.<field>`)."""
    if not isinstance(payload, dict):
        return []  # intake already says the payload must be an object
    errors: list[dict] = []

    def need(name: str, ok: bool, message: str) -> None:
        if not ok:
            errors.append({"field": f"payload.{name}", "message": message})

    if event_type == FIELD_SERVICE:
        ref = payload.get("appointment")
        need(
            "appointment",
            isinstance(ref, str) and 0 < len(ref) <= 100,
            "The appointment reference, at most 100 characters.",
        )
        need(
            "status",
            payload.get("status") in AppointmentStatus.values,
            f"One of {', '.join(AppointmentStatus.values)}.",
        )
        window: list[datetime] = []
        for name in ("window_start", "window_end"):
            value = payload.get(name)
            parsed = parse_datetime(value) if isinstance(value, str) else None
            if parsed is not None and parsed.tzinfo is not None:
                window.append(parsed)
            else:
                need(name, False, "A date-time with offset.")
        if len(window) == 2:
            need("window_end", window[1] > window[0], "The window must end after it starts.")
        purpose = payload.get("purpose")
        need(
            "purpose",
            isinstance(purpose, str) and 0 < len(purpose) <= 200,
            "What the visit is for, at most 200 characters.",
        )
        technician = payload.get("technician", "")
        need("technician", isinstance(technician, str) and len(technician) <= 100, "A name.")
    elif event_type in ADVISORIES:
        wear = payload.get("wear")
        need(
            "wear",
            isinstance(wear, int | float) and not isinstance(wear, bool) and 0 <= wear <= 1,
            "A number from 0 to 1.",
        )
    return errors


def customers_at(*, asset_ids: set[int]) -> dict[int, list[int]]:
    """{asset id: the customers with a service point on exactly that asset}."""
    found: dict[int, list[int]] = {}
    for asset_id, customer_id in (
        ServicePoint.objects.filter(asset_id__in=asset_ids)
        .order_by("customer_id")
        .values_list("asset_id", "customer_id")
    ):
        found.setdefault(asset_id, []).append(customer_id)
    return found


def events_apply(*, events: list[Event]) -> None:
    """Apply new customer events (stored already), oldest first."""
    served = customers_at(asset_ids={e.asset_id for e in events})
    for event in sorted(events, key=lambda e: (e.occurred_at, e.pk)):
        customers = served.get(event.asset_id, [])
        if not customers:
            continue  # checked at intake; the service point went meanwhile
        if event.event_type == FIELD_SERVICE:
            _appointment_apply(event, customers[0])
        else:
            _advisory_apply(event, ADVISORIES[event.event_type], customers)


def _customer_block(customer: Customer) -> dict[str, Any]:
    from cases.incidents.services import customer_block  # services imports this module

    return customer_block(customer, None)


@transaction.atomic
def _appointment_apply(event: Event, customer_id: int) -> None:
    p = event.payload
    start, end = parse_datetime(p["window_start"]), parse_datetime(p["window_end"])
    assert start is not None
    assert end is not None
    wanted = {
        "status": p["status"],
        "window_start": start,
        "window_end": end,
        "purpose": p["purpose"],
        "technician": p.get("technician", ""),
    }
    appointment = Appointment.objects.select_for_update().filter(reference=p["appointment"]).first()
    if appointment is None:
        appointment = Appointment.objects.create(
            reference=p["appointment"],
            customer_id=customer_id,
            asset_id=event.asset_id,
            last_event_at=event.occurred_at,
            **wanted,
        )
    else:
        if event.occurred_at <= appointment.last_event_at:
            return  # older than what the appointment says now: out of order, changes nothing
        if wanted["status"] == AppointmentStatus.BOOKED and (start, end) != (
            appointment.window_start,
            appointment.window_end,
        ):
            wanted["status"] = AppointmentStatus.CHANGED  # a booking moved
        appointment.last_event_at = event.occurred_at
        if all(getattr(appointment, k) == v for k, v in wanted.items()):
            appointment.save(update_fields=["last_event_at"])
            return  # nothing the customer needs to hear
        for name, value in wanted.items():
            setattr(appointment, name, value)
        appointment.revision += 1
        appointment.save()
    customer = Customer.objects.get(pk=customer_id)
    # The technician at the door soon: the fast channels first.
    soon = appointment.status == AppointmentStatus.ON_THE_WAY
    data: dict[str, Any] = {
        "customer": _customer_block(customer),
        "reference": appointment.reference,
        "appointment": {
            "status": appointment.status,
            "window_start": appointment.window_start.isoformat(),
            "window_end": appointment.window_end.isoformat(),
            "purpose": appointment.purpose,
        },
    }
    if appointment.technician:
        data["appointment"]["technician"] = appointment.technician
    [result] = communications_intake(
        items=[
            {
                "template": "technician_appointment",
                "customer": customer_id,
                "data": data,
                "idempotency_key": f"appointment:{appointment.reference}:{appointment.revision}",
                "urgency": "high" if soon else "normal",
                "category": "service",
                "correlation_id": appointment.reference,
            }
        ],
        client=CLIENT,
        by=None,
        source="field_service",
    )
    if result.communication_id:
        Appointment.objects.filter(pk=appointment.pk).update(communication=result.communication_id)


def _advisory_apply(event: Event, rule: AdvisoryRule, customer_ids: list[int]) -> None:
    wear = float(event.payload["wear"])
    if wear < rule.threshold:
        return
    asset = event.asset
    customers = Customer.objects.in_bulk(customer_ids)
    year = event.occurred_at.year
    items = [
        {
            "template": rule.template,
            "customer": customer_id,
            "data": {
                "customer": _customer_block(customers[customer_id]),
                "reference": f"OFFER-{year}-{asset.code}"[:60],
                "offer": {
                    "device": asset.name or asset.code,
                    "observation": rule.observation.format(wear=round(wear * 100)),
                    "plan": rule.plan,
                    "monthly_price": rule.monthly_price,
                },
            },
            # One offer per device and customer a year, however often the wear is reported.
            "idempotency_key": f"offer:{rule.event_type}:{asset.code}:{customer_id}:{year}",
            "category": rule.category,
            "correlation_id": f"{event.source}:{event.event_id}",
        }
        for customer_id in customer_ids
        if customer_id in customers
    ]
    communications_intake(items=items, client=CLIENT, by=None, source="advisory")


def intake_errors(
    item: Mapping[str, Any], asset: tuple[int, str, str] | None, served: Mapping[int, list[int]]
) -> list[dict]:
    """A customer event's own checks at intake: its payload, and a customer at its asset."""
    errors = payload_errors(str(item.get("event_type")), item.get("payload", {}))
    if asset is not None and not served.get(asset[0]):
        errors.append({"field": "asset", "message": "No customer is served at this asset."})
    return errors
