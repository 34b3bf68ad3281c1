"""An incident that gathers events for hours keeps taking them at the same cost: one bulk call
(and the evaluation it queues) runs the same statements whether the incident holds a hundred
events or twenty thousand, and none of them reads the incident's events."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from cases.incidents import services
from cases.incidents.models import Event, Incident, IncidentState
from notifications.models import Asset
from tests.cases.incident_fixtures import T0, event, grid

BATCH = 100
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _rules(settings):
    # Notices wait an hour: the calls measured only take events in and evaluate the incident.
    settings.CCM_INCIDENT_RULES = {"power_outage": {"group_wait": 3600}}


def _shape(sql: str) -> str:
    """A statement without its values (ids, times, codes differ from call to call)."""
    sql = re.sub(r'"s\d+_x\d+"', "?", sql)  # savepoint names
    sql = re.sub(r"::int[248]\[\]", "::int[]", sql)  # an id array's type follows its values
    sql = re.sub(r"'(?:[^']|'')*'", "?", sql)
    sql = re.sub(r"\b\d+(\.\d+)?\b", "?", sql)
    return re.sub(r"\?(?:, \?)+", "?…", sql)


def _one_call(meters: list[str], first: int, run_tasks) -> list[str]:
    """The statements of one bulk call of BATCH events, its queued evaluation included."""
    items = [event(meters[n % len(meters)], n) for n in range(first, first + BATCH)]
    with CaptureQueriesContext(connection) as queries:
        run_tasks(services.events_ingest, items=items)
    return [q["sql"] for q in queries.captured_queries]


def _grow(incident: Incident, meters: list[str], events: int) -> None:
    """`events` more repeats from the incident's meters, stored straight into it."""
    asset_ids = dict(Asset.objects.filter(code__in=meters).values_list("code", "pk"))
    Event.objects.bulk_create(
        [
            Event(
                source="scada",
                event_id=f"grown-{n}",
                event_type="power_outage",
                severity="major",
                action="trigger",
                asset_id=asset_ids[meters[n % len(meters)]],
                occurred_at=T0 + timedelta(seconds=n),
                incident=incident,
            )
            for n in range(events)
        ],
        batch_size=5000,
    )


def test_one_bulk_call_runs_the_same_statements_however_large_the_incident(run_tasks):
    # given an open incident holding 200 events
    meters = grid(devices=20, customers=2)
    run_tasks(services.events_ingest, items=[event(m, n) for n in range(10) for m in meters])
    small = _one_call(meters, 1_000_000, run_tasks)
    # when it has grown to more than 20,000 events
    _grow(Incident.objects.get(), meters, 20_000)
    large = _one_call(meters, 2_000_000, run_tasks)
    # then one call of 100 events costs the same statements as before
    assert [_shape(q) for q in large] == [_shape(q) for q in small]
    # and none of them reads the incident's events (only the dedup check and the attach touch
    # cases_event, by event id)
    reads = [q for q in large if 'FROM "cases_event" WHERE "cases_event"."incident_id"' in q]
    assert reads == []


def test_a_clear_older_than_the_alarms_latest_trigger_does_not_resolve_it(run_tasks):
    # given a meter in alarm since a minute ago (its customers not told yet: group_wait)
    meters = grid(devices=1, customers=1)
    t = timezone.now() - timedelta(minutes=1)
    run_tasks(services.events_ingest, items=[event(meters[0], 1, at=t)])
    # when a clear from before the trigger arrives late
    late = event(meters[0], 2, action="resolve", at=t - timedelta(seconds=5))
    run_tasks(services.events_ingest, items=[late])
    # then the incident stays open
    incident = Incident.objects.get()
    assert incident.state == IncidentState.DETECTED
    # and a clear after the trigger resolves it, at the time of the clear
    clear = event(meters[0], 3, action="resolve", at=t + timedelta(seconds=5))
    run_tasks(services.events_ingest, items=[clear])
    incident.refresh_from_db()
    assert incident.state == IncidentState.RESOLVED
    assert incident.resolved_at == t + timedelta(seconds=5)
