"""Planned maintenance: a scheduled incident (Statuspage's scheduled maintenance) with a window,
the assets it affects, a notice when it is scheduled, a reminder `reminder_hours` before the
window, a start notice when the window opens and a completion notice when it closes (or when an
operator completes it early). The same incident updates and the same one-notice-per-customer
sending as an unplanned incident; the one-minute tick (`incidents_due_run`) moves it along.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from cases.incidents.models import Incident, IncidentKind, IncidentState, IncidentUpdate, UpdateKind
from cases.incidents.rules import PLANNED
from ccm import audit
from notifications.customers.assets import selectors as asset_selectors
from notifications.customers.assets.models import Asset

SERVICES = ("electricity", "gas")  # what the start and completion templates can say
MAX_REMINDER_HOURS = 24 * 14


class MaintenanceInvalid(Exception):
    def __init__(self, errors: list[dict]):
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


def _checked(
    *, title: str, service: str, assets: Sequence[str], start, end, work: str, reminder_hours
) -> tuple[list[Asset], datetime, datetime]:
    errors: list[dict] = []
    if not isinstance(title, str) or not title.strip() or len(title) > 150:
        errors.append({"field": "title", "message": "A title of at most 150 characters."})
    if service not in SERVICES:
        errors.append({"field": "service", "message": f"One of {', '.join(SERVICES)}."})
    if not isinstance(work, str) or not work.strip() or len(work) > 300:
        errors.append({"field": "work", "message": "What the work is, at most 300 characters."})
    if not isinstance(reminder_hours, int) or not 0 < reminder_hours <= MAX_REMINDER_HOURS:
        errors.append(
            {"field": "reminder_hours", "message": f"Hours from 1 to {MAX_REMINDER_HOURS}."}
        )
    found: dict[str, Asset] = {}
    if not isinstance(assets, list) or not assets or not all(isinstance(a, str) for a in assets):
        errors.append({"field": "assets", "message": "A non-empty list of asset codes."})
    else:
        found = {a.code: a for a in Asset.objects.filter(code__in=assets)}
        missing = [a for a in assets if a not in found]
        if missing:
            errors.append({"field": "assets", "message": f"No asset {missing[0]!r}."})
    if not isinstance(start, datetime) or start.tzinfo is None:
        errors.append({"field": "start", "message": "A date-time with a UTC offset."})
    if not isinstance(end, datetime) or end.tzinfo is None:
        errors.append({"field": "end", "message": "A date-time with a UTC offset."})
    elif isinstance(start, datetime) and start.tzinfo is not None and end <= start:
        errors.append({"field": "end", "message": "The window must end after it starts."})
    if errors:
        raise MaintenanceInvalid(errors)
    return [found[a] for a in dict.fromkeys(assets)], start, end


@transaction.atomic
def maintenance_schedule(
    *,
    title: str,
    service: str,
    assets: Sequence[str],
    start: datetime,
    end: datetime,
    work: str,
    reminder_hours: int = 24,
    by=None,
) -> Incident:
    """Schedule planned maintenance; the affected customers are told now (the notice), then
    reminded, told when it starts and when it is complete. Raises MaintenanceInvalid naming
    every bad field (nothing is stored)."""
    from cases.incidents.services import update_create

    found, start, end = _checked(
        title=title,
        service=service,
        assets=assets,
        start=start,
        end=end,
        work=work,
        reminder_hours=reminder_hours,
    )
    now = timezone.now()
    incident = Incident.objects.create(
        reference=uuid.uuid4().hex[:20],
        kind=IncidentKind.PLANNED,
        event_type=PLANNED.event_type,
        asset=found[0],
        dedup_key=f"planned:{uuid.uuid4().hex}",
        severity="info",
        title=title.strip(),
        service=service,
        work=work.strip(),
        window_start=start,
        window_end=end,
        reminder_hours=reminder_hours,
        first_event_at=start,
        last_event_at=start,
    )
    incident.reference = f"INC-{now.year}-{incident.pk:05d}"
    incident.save(update_fields=["reference"])
    incident.also_affects.set(found[1:])
    audit.record(
        actor=by,
        action="incident.maintenance_scheduled",
        subject=incident,
        after={
            "reference": incident.reference,
            "assets": [a.code for a in found],
            "start": start.isoformat(),
            "end": end.isoformat(),
        },
    )
    update_create(incident, kind=UpdateKind.NOTICE, message={}, by=by)
    incident.notify()
    incident.save()
    return incident


def maintenance_evaluate(incident: Incident, *, now: datetime) -> str:
    """Inside `incident_evaluate`'s transaction, the incident locked: the reminder, the start
    and the completion, each once, when their time has come."""
    from cases.incidents.services import update_create

    if incident.held or incident.window_start is None or incident.window_end is None:
        return incident.state
    kinds = set(incident.updates.values_list("kind", flat=True))
    due: str | None = None
    if now >= incident.window_end:
        update_create(
            incident,
            kind=UpdateKind.RESOLUTION,
            message={"restored_at": incident.window_end.isoformat()},
        )
        incident.resolve()
        incident.resolved_at = now
        incident.save()
        audit.record(actor=None, action="incident.maintenance_completed", subject=incident)
        return incident.state
    if now >= incident.window_start:
        due = None if UpdateKind.START in kinds else UpdateKind.START
    elif now >= incident.window_start - timedelta(hours=incident.reminder_hours):
        due = None if kinds & {UpdateKind.REMINDER, UpdateKind.START} else UpdateKind.REMINDER
    if due is not None:
        update_create(incident, kind=due, message={})
        if incident.state == IncidentState.MONITORING:
            incident.renotify()
            incident.save()
    return incident.state


def customer_ids_affected(incident: Incident) -> list[int]:
    """Customers served under any of the maintenance's assets, each once, in id order."""
    ids: set[int] = set(asset_selectors.customer_ids_under(asset=incident.asset))
    for asset in incident.also_affects.all():
        ids.update(asset_selectors.customer_ids_under(asset=asset))
    return sorted(ids)


def notice_data(
    *, incident: Incident, update: IncidentUpdate, base: dict[str, Any], supply: str
) -> tuple[str, dict[str, Any]]:
    """The template and data of one customer's maintenance notice for an update."""
    assert incident.window_start is not None
    assert incident.window_end is not None
    area = incident.asset.name or incident.asset.code
    start, end = incident.window_start.isoformat(), incident.window_end.isoformat()
    if update.kind == UpdateKind.RESOLUTION:
        return PLANNED.resolution_template, {
            **base,
            "outage": {
                "type": "planned",
                "service": incident.service,
                "area": area,
                "start": start,
                "restored_at": update.message.get("restored_at") or timezone.now().isoformat(),
            },
        }
    if update.kind == UpdateKind.START:
        return PLANNED.update_template, {
            **base,
            "document_date": timezone.localdate().isoformat(),
            "outage": {
                "type": "planned",
                "service": incident.service,
                "area": area,
                "start": start,
                "expected_end": end,
                "reason": incident.work,
            },
            "supply_address": supply or area,
        }
    kind = "reminder" if update.kind == UpdateKind.REMINDER else "notice"
    return PLANNED.notice_template, {
        **base,
        "maintenance": {
            "kind": kind,
            "service": incident.service,
            "area": area,
            "start": start,
            "end": end,
            "work": incident.work,
        },
    }
