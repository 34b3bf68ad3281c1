"""Event intake, grouping into incidents, incident updates and the notices they send.

- `events_ingest` validates a batch, resolves every asset code with one query, inserts the new
  events with one INSERT … ON CONFLICT DO NOTHING (a replay changes nothing) and groups them;
- grouping puts an event into the open incident of its rule's key (event type + the ancestor
  asset of the rule's kind); an event older than a closed incident's resolution joins that
  incident without reopening it;
- `incident_evaluate` (a task, safe to run twice) decides what the incident says next: the first
  notice after `group_wait`, automatic updates every `group_interval` up to the repeat limit,
  the resolution once every alarm is cleared (latest event per alarm by `occurred_at`, so events
  out of order change nothing);
- `incident_update_send` (a task, safe to run twice) materialises one notice per affected
  customer per update in chunks and hands them to the one intake, `communications_intake`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from cases.incidents import customer_events, maintenance
from cases.incidents.models import (
    INCIDENT_OPEN_STATES,
    SEVERE,
    Event,
    EventAction,
    Incident,
    IncidentAlarm,
    IncidentAlert,
    IncidentKind,
    IncidentNotice,
    IncidentState,
    IncidentUpdate,
    Severity,
    UpdateKind,
)
from cases.incidents.rules import Rule, incident_rule, rule_for
from ccm import audit
from ccm.rows import insert_rows
from ccm.tasks import enqueue
from notifications.customers.assets import selectors as asset_selectors
from notifications.customers.assets.models import PATH_SEP, Asset, ServicePoint
from notifications.models import Customer
from notifications.pipeline.intake import communications_intake

MAX_EVENTS = 1000  # per call
NOTICE_CHUNK = 500  # customers handed to the intake at once
CLIENT = "incidents"
SEVERITY_ORDER: list[str] = [Severity.INFO, Severity.WARNING, Severity.MAJOR, Severity.CRITICAL]


class IncidentError(Exception):
    pass


@dataclass
class EventResult:
    index: int
    status: str = "created"  # created | duplicate | refused
    errors: list[dict] = field(default_factory=list)
    incident: str = ""


# --- intake ---------------------------------------------------------------------------------


def _check(item: Mapping[str, Any], assets: Mapping[str, tuple[int, str, str]]) -> list[dict]:
    errors: list[dict] = []

    def text(name: str, limit: int, required: bool = True) -> None:
        value = item.get(name)
        if value is None or value == "":
            if required:
                errors.append({"field": name, "message": "This field is required."})
        elif not isinstance(value, str) or len(value) > limit:
            errors.append({"field": name, "message": f"A string of at most {limit} characters."})

    text("source", 100)
    text("event_id", 200)
    text("event_type", 100)
    text("asset", 100)
    text("dedup_key", 255, required=False)
    event_type = item.get("event_type")
    if (
        isinstance(event_type, str)
        and event_type
        and rule_for(event_type) is None
        and event_type not in customer_events.EVENT_TYPES
    ):
        errors.append({"field": "event_type", "message": f"No incident rule for {event_type!r}."})
    if item.get("severity") not in Severity.values:
        errors.append({"field": "severity", "message": f"One of {', '.join(Severity.values)}."})
    if item.get("action", EventAction.TRIGGER) not in EventAction.values:
        errors.append({"field": "action", "message": f"One of {', '.join(EventAction.values)}."})
    occurred = item.get("occurred_at")
    parsed = parse_datetime(occurred) if isinstance(occurred, str) else None
    if parsed is None or parsed.tzinfo is None:
        errors.append(
            {"field": "occurred_at", "message": "An ISO 8601 date-time with a UTC offset."}
        )
    if not isinstance(item.get("payload", {}), dict):
        errors.append({"field": "payload", "message": "A JSON object."})
    asset = item.get("asset")
    if isinstance(asset, str) and asset and asset not in assets:
        errors.append({"field": "asset", "message": f"No asset {asset!r}."})
    return errors


def events_ingest(*, items: Sequence[Mapping[str, Any]], by=None) -> list[EventResult]:
    """Store and group a batch of events; one result per item, in order. Bad items are refused
    with their errors (nothing stored for them); an event already received is a duplicate."""
    results = [EventResult(index) for index in range(len(items))]
    codes = {i.get("asset") for i in items if isinstance(i.get("asset"), str)}
    assets = asset_selectors.assets_by_code(codes={c for c in codes if c})
    good: dict[tuple[str, str], tuple[int, Event]] = {}
    # Customer events (field service, advisories) need a customer at their asset.
    served = customer_events.customers_at(
        asset_ids={
            assets[i["asset"]][0]
            for i in items
            if i.get("event_type") in customer_events.EVENT_TYPES and i.get("asset") in assets
        }
    )
    for item, result in zip(items, results, strict=True):
        result.errors = _check(item, assets)
        if not result.errors and item.get("event_type") in customer_events.EVENT_TYPES:
            result.errors = customer_events.intake_errors(item, assets[item["asset"]], served)
        if result.errors:
            result.status = "refused"
            continue
        key = (item["source"], item["event_id"])
        if key in good:
            result.status = "duplicate"
            continue
        good[key] = (
            result.index,
            Event(
                source=item["source"],
                event_id=item["event_id"],
                event_type=item["event_type"],
                severity=item["severity"],
                action=item.get("action") or EventAction.TRIGGER,
                asset_id=assets[item["asset"]][0],
                occurred_at=parse_datetime(item["occurred_at"]),  # type: ignore[misc]
                dedup_key=item.get("dedup_key") or "",
                payload=item.get("payload") or {},
            ),
        )
    if not good:
        return results
    sources = {s for s, _ in good}
    event_ids = {e for _, e in good}
    seen = _received(sources, event_ids)
    for key in seen & set(good):
        results[good[key][0]].status = "duplicate"
    new = [event for key, (_, event) in good.items() if key not in seen]
    try:
        with transaction.atomic():
            insert_rows(Event, new)  # COPY, the ids drawn first: no second read
    except IntegrityError:
        # A concurrent call stored some of these first: insert the rest, once each.
        for e in new:
            e.pk, e._state.adding = None, True
        Event.objects.bulk_create(new, ignore_conflicts=True, batch_size=1000)
        fresh = {
            (source, event_id): pk
            for source, event_id, pk in Event.objects.filter(
                source__in=sources, event_id__in={e.event_id for e in new}, incident__isnull=True
            ).values_list("source", "event_id", "pk")
        }
        new = [e for e in new if (e.source, e.event_id) in fresh]
        for e in new:
            e.pk = fresh[(e.source, e.event_id)]
    paths = {pk: path for pk, _, path in assets.values()}
    for_customers = [e for e in new if e.event_type in customer_events.EVENT_TYPES]
    if for_customers:
        customer_events.events_apply(events=for_customers)
        new = [e for e in new if e.event_type not in customer_events.EVENT_TYPES]
    by_key = events_group(events=new, paths=paths)
    for key, (index, _) in good.items():
        if key in by_key:
            results[index].incident = by_key[key]
    return results


def _received(sources: set[str], event_ids: set[str]) -> set[tuple[str, str]]:
    """(source, event_id) pairs among these already stored."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # arrays bind as one parameter each
            cursor.execute(
                "SELECT source, event_id FROM cases_event "
                "WHERE event_id = ANY(%s) AND source = ANY(%s)",
                [list(event_ids), list(sources)],
            )
            return {(source, event_id) for source, event_id in cursor.fetchall()}
    return set(
        Event.objects.filter(source__in=sources, event_id__in=event_ids).values_list(
            "source", "event_id"
        )
    )


def _group_asset(path: str, rule: Rule, kinds: Mapping[str, tuple[int, str, str]]) -> str:
    """The code of the nearest ancestor (or the asset itself) of the rule's kind."""
    codes = [c for c in path.split(PATH_SEP) if c]
    for code in reversed(codes):
        if kinds.get(code, (0, "", ""))[1] == rule.group_by:
            return code
    return codes[-1]


def events_group(*, events: list[Event], paths: Mapping[int, str]) -> dict[tuple[str, str], str]:
    """Put new events into incidents; {(source, event_id): incident reference}. `paths`: the
    asset path of each event's asset id."""
    ancestors = {c for e in events for c in paths[e.asset_id].split(PATH_SEP) if c}
    kinds = asset_selectors.assets_by_code(codes=ancestors)
    groups: dict[str, list[Event]] = defaultdict(list)
    rules: dict[str, Rule] = {}
    anchors: dict[str, str] = {}
    for event in events:
        rule = rule_for(event.event_type)
        assert rule is not None  # checked at intake
        anchor = _group_asset(paths[event.asset_id], rule, kinds)
        key = f"{event.event_type}:{anchor}"
        groups[key].append(event)
        rules[key], anchors[key] = rule, anchor
    placed: dict[tuple[str, str], str] = {}
    for key, members in groups.items():
        members.sort(key=lambda e: (e.occurred_at, e.pk))
        for attempt in range(2):
            try:
                placed.update(_group_one(key, members, rules[key], anchors[key]))
                break
            except IntegrityError:
                if attempt:  # a concurrent intake opened it twice in a row: give up loudly
                    raise
    return placed


@transaction.atomic
def _group_one(
    key: str, members: list[Event], rule: Rule, anchor: str
) -> dict[tuple[str, str], str]:
    placed: dict[tuple[str, str], str] = {}
    open_now = Incident.objects.select_for_update().filter(state__in=INCIDENT_OPEN_STATES)
    incident = open_now.filter(dedup_key=key).first()
    pending = members
    if incident is None:
        closed = (
            Incident.objects.filter(dedup_key=key, resolved_at__isnull=False)
            .order_by("-resolved_at")
            .first()
        )
        if closed is not None and closed.resolved_at is not None:
            # Late events of a closed incident join it; they do not reopen it.
            late = [e for e in members if e.occurred_at <= closed.resolved_at]
            _attach(closed, late, placed)
            pending = [e for e in members if e.occurred_at > closed.resolved_at]
        if not any(e.action != EventAction.RESOLVE for e in pending):
            return placed  # a clear with nothing open to clear: kept as received
        incident = _incident_open(key, pending, rule, anchor)
    _attach(incident, pending, placed)
    enqueue("cases.incidents.tasks.incident_evaluate", incident.pk)
    return placed


def _attach(incident: Incident, events: list[Event], placed: dict) -> None:
    if not events:
        return
    ids = [e.pk for e in events]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # one array parameter, not 1,000 placeholders
            cursor.execute(
                "UPDATE cases_event SET incident_id = %s WHERE id = ANY(%s)",
                [incident.pk, ids],
            )
    else:
        Event.objects.filter(pk__in=ids).update(incident=incident)
    _alarms_advance(incident, events)
    worst = max([incident.severity, *(e.severity for e in events)], key=SEVERITY_ORDER.index)
    last = max(e.occurred_at for e in events)
    Incident.objects.filter(pk=incident.pk).update(
        severity=worst,
        last_event_at=max(incident.last_event_at, last),
        updated_at=timezone.now(),
    )
    for e in events:
        placed[(e.source, e.event_id)] = incident.reference


def _alarm_key(event: Event) -> str:
    return event.dedup_key or f"asset:{event.asset_id}"


def _alarms_advance(incident: Incident, events: list[Event]) -> None:
    """Move each alarm these events belong to onto its latest event, in one statement: an event
    older than the alarm's latest (out of order) changes nothing."""
    latest: dict[str, Event] = {}
    for e in events:
        key = _alarm_key(e)
        if key not in latest or (e.occurred_at, e.pk) > (latest[key].occurred_at, latest[key].pk):
            latest[key] = e
    table = IncidentAlarm._meta.db_table
    adapt = connection.ops.adapt_datetimefield_value
    rows = ", ".join(["(%s, %s, %s, %s, %s)"] * len(latest))
    params = [
        value
        for key, e in latest.items()
        for value in (incident.pk, key, adapt(e.occurred_at), e.pk, e.action)
    ]
    with connection.cursor() as cursor:  # the same statement on PostgreSQL and SQLite
        cursor.execute(
            f"INSERT INTO {table} (incident_id, key, occurred_at, event_id, action) "  # noqa: S608 - the model's own table name
            f"VALUES {rows} ON CONFLICT (incident_id, key) DO UPDATE SET "
            "occurred_at = excluded.occurred_at, event_id = excluded.event_id, "
            "action = excluded.action "
            f"WHERE (excluded.occurred_at, excluded.event_id) > ({table}.occurred_at, "
            f"{table}.event_id)",
            params,
        )


def _incident_open(key: str, events: list[Event], rule: Rule, anchor: str) -> Incident:
    asset = Asset.objects.get(code=anchor)
    now = timezone.now()
    incident = Incident.objects.create(
        reference=uuid.uuid4().hex[:20],
        event_type=rule.event_type,
        asset=asset,
        dedup_key=key,
        severity=events[0].severity,
        title=f"{rule.title}: {asset.name or asset.code}",
        first_event_at=events[0].occurred_at,
        last_event_at=events[0].occurred_at,
    )
    # The whole id, not a remainder of it: the reference is unique, and a remainder would
    # repeat after 100,000 incidents (an IntegrityError at event intake).
    incident.reference = f"INC-{now.year}-{incident.pk:05d}"
    Incident.objects.filter(pk=incident.pk).update(reference=incident.reference)
    # Inhibition: an open incident on an ancestor already speaks for this subtree.
    ancestors = [c for c in asset.path.split(PATH_SEP) if c and c != asset.code]
    over = (
        Incident.objects.filter(
            asset__code__in=ancestors,
            state__in=[IncidentState.DETECTED, IncidentState.NOTIFYING, IncidentState.MONITORING],
        )
        .order_by("first_event_at")
        .first()
    )
    if over is not None:
        incident.suppress()
        incident.suppressed_by = over
        incident.save()
    else:
        # …and this one silences the not yet notified incidents beneath it.
        for below in (
            Incident.objects.select_for_update()
            .filter(state=IncidentState.DETECTED, asset__path__startswith=asset.path)
            .exclude(pk=incident.pk)
        ):
            below.suppress()
            below.suppressed_by = incident
            below.save()
            audit.record(actor=None, action="incident.suppressed", subject=below)
    audit.record(
        actor=None,
        action="incident.detected",
        subject=incident,
        after={"reference": incident.reference, "key": key, "state": incident.state},
    )
    if incident.severity in SEVERE and incident.state != IncidentState.SUPPRESSED:
        alert = IncidentAlert.objects.create(
            incident=incident, message_id=f"<incident-{incident.pk}@ccm.invalid>"
        )
        enqueue("cases.incidents.tasks.incident_alert_send", alert.pk)
        enqueue("cases.incidents.tasks.incident_alert_push", alert.pk)
    return incident


# --- evaluation -----------------------------------------------------------------------------


def alarms_active(*, incident: Incident) -> int:
    """Alarms (a dedup key, else a device) whose latest event by occurred_at is not a clear."""
    return incident.alarms.exclude(action=EventAction.RESOLVE).count()


def update_create(
    incident: Incident, *, kind: str, message: dict[str, Any], by=None
) -> IncidentUpdate:
    last = incident.updates.aggregate(n=Max("sequence"))["n"] or 0
    update = IncidentUpdate.objects.create(
        incident=incident, sequence=last + 1, kind=kind, message=message, created_by=by
    )
    audit.record(
        actor=by,
        action=f"incident.{kind}",
        subject=incident,
        after={"reference": incident.reference, "sequence": update.sequence, "message": message},
    )
    enqueue("cases.incidents.tasks.incident_update_send", update.pk)
    return update


def _locked(incident_id: int) -> Incident:
    return Incident.objects.select_for_update().select_related("asset").get(pk=incident_id)


@transaction.atomic
def incident_evaluate(*, incident_id: int, now: datetime | None = None) -> str:
    """Decide what the incident says next; returns its state. Safe to run any number of times."""
    now = now or timezone.now()
    incident = _locked(incident_id)
    if not incident.is_open:
        return incident.state
    if incident.kind == IncidentKind.PLANNED:
        return maintenance.maintenance_evaluate(incident, now=now)
    rule = incident_rule(incident)
    if alarms_active(incident=incident) == 0:
        last = incident.last_event_at
        if incident.state in (IncidentState.NOTIFYING, IncidentState.MONITORING):
            update_create(
                incident, kind=UpdateKind.RESOLUTION, message={"restored_at": last.isoformat()}
            )
        before = incident.state
        incident.resolve()
        incident.resolved_at = last
        incident.save()
        audit.record(
            actor=None,
            action="incident.resolved",
            subject=incident,
            before={"state": before},
            after={"state": incident.state},
        )
        return incident.state
    if incident.held or incident.state == IncidentState.SUPPRESSED:
        return incident.state
    if incident.state == IncidentState.DETECTED:
        if now >= incident.first_event_at + timedelta(seconds=rule.group_wait):
            update_create(incident, kind=UpdateKind.NOTICE, message={})
            incident.notify()
            incident.save()
    elif incident.state == IncidentState.MONITORING:
        last_update = incident.updates.order_by("-sequence").first()
        automatic = incident.updates.filter(kind=UpdateKind.UPDATE, created_by__isnull=True)
        if (
            last_update is not None
            and incident.last_event_at > last_update.created_at
            and now >= last_update.created_at + timedelta(seconds=rule.group_interval)
            and automatic.count() < rule.repeat_limit
        ):
            update_create(incident, kind=UpdateKind.UPDATE, message={})
            incident.renotify()
            incident.save()
    return incident.state


def incidents_due_run() -> int:
    """Evaluate every open incident (the periodic tick that ends `group_wait` and
    `group_interval`); returns how many were looked at."""
    ids = list(
        Incident.objects.filter(
            state__in=[IncidentState.DETECTED, IncidentState.MONITORING]
        ).values_list("pk", flat=True)
    )
    for pk in ids:
        incident_evaluate(incident_id=pk)
    return len(ids)


# --- operator actions -----------------------------------------------------------------------


@transaction.atomic
def incident_acknowledge(*, incident: Incident, by) -> Incident:
    incident = _locked(incident.pk)
    if incident.acknowledged_at is None:
        incident.acknowledged_at, incident.acknowledged_by = timezone.now(), by
        incident.save()
        audit.record(actor=by, action="incident.acknowledged", subject=incident)
    return incident


@transaction.atomic
def incident_hold(*, incident: Incident, held: bool, by) -> Incident:
    incident = _locked(incident.pk)
    incident.held = held
    incident.save()
    audit.record(
        actor=by, action="incident.held" if held else "incident.released", subject=incident
    )
    if not held:
        enqueue("cases.incidents.tasks.incident_evaluate", incident.pk)
    return incident


@transaction.atomic
def incident_update_send_now(*, incident: Incident, message: dict[str, Any], by) -> IncidentUpdate:
    """An operator's update (new estimate, what we know): to every affected customer now."""
    incident = _locked(incident.pk)
    if incident.state not in (IncidentState.NOTIFYING, IncidentState.MONITORING):
        raise IncidentError("Only an incident whose customers were told can send an update.")
    update = update_create(incident, kind=UpdateKind.UPDATE, message=message, by=by)
    if incident.state == IncidentState.MONITORING:
        incident.renotify()
        incident.save()
    return update


@transaction.atomic
def incident_resolve(*, incident: Incident, by, cause: str = "") -> Incident:
    """Close an incident by hand: the notified customers get the confirmation."""
    incident = _locked(incident.pk)
    if not incident.is_open:
        raise IncidentError("The incident is closed already.")
    before = incident.state
    if before in (IncidentState.NOTIFYING, IncidentState.MONITORING):
        message = {"restored_at": timezone.now().isoformat(), "cause": cause}
        update_create(incident, kind=UpdateKind.RESOLUTION, message=message, by=by)
    incident.resolve()
    incident.resolved_at = timezone.now()
    incident.save()
    audit.record(actor=by, action="incident.resolved", subject=incident, before={"state": before})
    return incident


@transaction.atomic
def incident_false_alarm(*, incident: Incident, by, note: str = "") -> Incident:
    """Close without notices; customers already told get a retraction."""
    incident = _locked(incident.pk)
    if not incident.is_open:
        raise IncidentError("The incident is closed already.")
    before = incident.state
    if incident.notices.exists():
        update_create(incident, kind=UpdateKind.RETRACTION, message={"note": note}, by=by)
    incident.mark_false_alarm()
    incident.resolved_at = timezone.now()
    incident.save()
    audit.record(
        actor=by, action="incident.false_alarm", subject=incident, before={"state": before}
    )
    return incident


# --- notices --------------------------------------------------------------------------------


def customer_block(customer: Customer, point: ServicePoint | None) -> dict[str, Any]:
    """The `customer` block of a notice's data, from the customer record (the service point's
    address when the record has none)."""
    address = [line for line in customer.postal_address if line][:6]
    if len(address) < 2 and point is not None:
        address = [p.strip() for p in point.address.split(",") if p.strip()][:5]
        address.append(point.postcode or "-")
    while len(address) < 2:
        address.append("-")
    return {"name": customer.name[:60], "address": [line[:45] for line in address]}


def notice_data(
    *, incident: Incident, update: IncidentUpdate, customer: Customer, point: ServicePoint | None
) -> tuple[str, dict[str, Any]]:
    """The template and data of one customer's notice for an update. A customer who has not
    heard of the incident yet gets the first notice with the current state."""
    rule = incident_rule(incident)
    area = incident.asset.name or incident.asset.code
    start = incident.first_event_at
    expected_end = (
        update.message.get("expected_end")
        or (start + timedelta(hours=rule.restore_hours)).isoformat()
    )
    supply = ", ".join(
        p for p in [point.address if point else "", point.postcode if point else ""] if p
    )
    base = {"customer": customer_block(customer, point), "reference": incident.reference}
    if incident.kind == IncidentKind.PLANNED:
        return maintenance.notice_data(incident=incident, update=update, base=base, supply=supply)
    if update.kind == UpdateKind.RESOLUTION:
        outage = {
            "type": "unplanned",
            "service": rule.service,
            "area": area,
            "start": start.isoformat(),
            "restored_at": update.message.get("restored_at") or timezone.now().isoformat(),
        }
        if update.message.get("cause"):
            outage["cause"] = update.message["cause"]
        return rule.resolution_template, {**base, "outage": outage}
    if update.kind == UpdateKind.NOTICE or update.message.get("_first"):
        return rule.notice_template, {
            **base,
            "document_date": timezone.localdate().isoformat(),
            "outage": {
                "type": "unplanned",
                "service": rule.service,
                "area": area,
                "start": start.isoformat(),
                "expected_end": expected_end,
                "reason": update.message.get("reason") or rule.reason,
            },
            "supply_address": supply or area,
        }
    return rule.update_template, {
        **base,
        "outage": {
            "service": rule.service,
            "area": area,
            "start": start.isoformat(),
            "expected_end": expected_end,
        },
        "update": {
            "sequence": update.sequence,
            "kind": update.kind,
            "message": update.message.get("text")
            or update.message.get("note")
            or "Engineers are still working to restore your supply.",
        },
        "supply_address": supply or area,
    }


def incident_update_send(*, update_id: int, after: int = 0, whole: bool = False) -> dict[str, int]:
    """Materialise and hand over the notices of one update, a chunk at a time. Safe to run twice:
    a notice row is unique per (update, customer) and its communication per idempotency key.

    One call hands over one chunk (the customers with ids above `after`) and leaves the rest to
    a new task, so the first chunk's notices are composed and sent while the next ones are still
    being materialised; `whole` does every chunk in this call."""
    update = IncidentUpdate.objects.select_related("incident__asset").get(pk=update_id)
    incident = update.incident
    if incident.kind == IncidentKind.PLANNED and update.kind != UpdateKind.RESOLUTION:
        customer_ids = maintenance.customer_ids_affected(incident)
    elif update.kind in (UpdateKind.NOTICE, UpdateKind.UPDATE):
        customer_ids = asset_selectors.customer_ids_under(asset=incident.asset)
    else:
        # The confirmation or retraction goes to whoever was told: earlier updates still on
        # their way are finished first (their sends are idempotent), so nobody is left out.
        for earlier in incident.updates.filter(sequence__lt=update.sequence, completed_at=None):
            incident_update_send(update_id=earlier.pk, whole=True)
        customer_ids = sorted(
            set(
                IncidentNotice.objects.filter(incident=incident)
                .exclude(update=update)
                .values_list("customer_id", flat=True)
            )
        )
    IncidentUpdate.objects.filter(pk=update.pk).update(customers_total=len(customer_ids))
    # By customer id, not position: a customer added or gone meanwhile shifts nobody out.
    rest = [c for c in customer_ids if c > after]
    for start in range(0, len(rest), NOTICE_CHUNK):
        chunk = rest[start : start + NOTICE_CHUNK]
        _send_chunk(update, chunk)
        if not whole and start + NOTICE_CHUNK < len(rest):
            enqueue("cases.incidents.tasks.incident_update_send", update.pk, after=chunk[-1])
            return {"customers": len(customer_ids), "handed_up_to": chunk[-1]}
    sent = update.notices.filter(communication__isnull=False).count()
    refused = update.notices.exclude(error="").count()
    IncidentUpdate.objects.filter(pk=update.pk).update(
        notices_sent=sent, notices_refused=refused, completed_at=timezone.now()
    )
    with transaction.atomic():
        locked = _locked(incident.pk)
        if locked.state == IncidentState.NOTIFYING:
            locked.monitor()
            locked.save()
    return {"customers": len(customer_ids), "sent": sent, "refused": refused}


def _send_chunk(update: IncidentUpdate, customer_ids: list[int]) -> None:
    incident = update.incident
    rule = incident_rule(incident)
    told_before = set(
        IncidentNotice.objects.filter(incident=incident, customer_id__in=customer_ids)
        .exclude(update=update)
        .values_list("customer_id", flat=True)
    )
    IncidentNotice.objects.bulk_create(
        [IncidentNotice(incident=incident, update=update, customer_id=c) for c in customer_ids],
        ignore_conflicts=True,
    )
    pending = list(
        IncidentNotice.objects.filter(
            update=update, customer_id__in=customer_ids, communication__isnull=True, error=""
        ).select_related("customer")
    )
    if not pending:
        return
    points: dict[int, ServicePoint] = {}
    for point in ServicePoint.objects.filter(
        customer_id__in=[n.customer_id for n in pending],
        asset__path__startswith=incident.asset.path,
    ).order_by("code"):
        points.setdefault(point.customer_id, point)
    items = []
    for notice in pending:
        view = update
        if update.kind == UpdateKind.UPDATE and notice.customer_id not in told_before:
            # Newly affected: the current state, in the first notice's words.
            view = IncidentUpdate(
                incident=incident,
                sequence=update.sequence,
                kind=update.kind,
                message={**update.message, "_first": True},
            )
        template, data = notice_data(
            incident=incident,
            update=view,
            customer=notice.customer,
            point=points.get(notice.customer_id),
        )
        notice.template = template
        items.append(
            {
                "template": template,
                "customer": notice.customer_id,
                "data": data,
                "idempotency_key": f"incident:{incident.pk}:{update.sequence}:{notice.customer_id}",
                "urgency": rule.urgency,
                "category": rule.category,
                "correlation_id": incident.reference,
            }
        )
    results = communications_intake(items=items, client=CLIENT, by=None, source="incident")
    for notice, result in zip(pending, results, strict=True):
        notice.communication_id = result.communication_id
        notice.error = (
            ""
            if result.accepted
            else "; ".join(f"{e['field']}: {e['message']}" for e in result.errors)[:500]
        )
    IncidentNotice.objects.bulk_update(pending, ["template", "communication", "error"])
