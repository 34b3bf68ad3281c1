"""Events become incidents and one notice per customer per update, end to end on PostgreSQL:
through the events API, the grouping, the one intake and the real SMS dispatch."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail

from cases.incidents import services
from cases.incidents import tasks as incident_tasks
from cases.incidents.models import Event, Incident, IncidentNotice, IncidentState, UpdateKind
from ccm.models import AuditEvent
from notifications.channels import push, sms
from notifications.customers import services as customer_services
from notifications.customers.devices import device_register
from notifications.models import Communication, ContactPoint, Customer
from tests.cases.incident_fixtures import T0, event, grid

pytestmark = pytest.mark.usefixtures("outage_templates")
CUSTOMERS = 60


@pytest.fixture(autouse=True)
def _no_wait(settings):
    settings.CCM_INCIDENT_RULES = {"power_outage": {"group_wait": 0}}
    settings.CCM_ENABLED_CHANNELS = ["email", "sms", "push", "print"]
    sms.outbox.clear()


def post(api, events, run_tasks):
    return run_tasks(api.post, "/api/v1/events", {"events": events}, format="json")


def test_an_outage_on_one_feeder_is_one_incident_one_notice_update_and_restoration_each(
    events_api, run_tasks, ops
):
    # given 20 meters under one feeder serving 60 customers (each notice also renders its PDF)
    meters = grid(devices=20, customers=CUSTOMERS)
    # when 480 events (a trigger then repeats from every meter) arrive in one bulk call
    triggers = [event(m, n) for n in range(24) for m in meters]
    response = post(events_api, triggers, run_tasks)
    # then one incident, and every customer gets one outage notice by SMS
    assert response.status_code == 200, response.json()
    assert response.json()["created"] == 480
    (incident,) = Incident.objects.all()
    assert incident.asset.code == "feeder-1"
    assert incident.state == IncidentState.MONITORING
    notice = incident.updates.get(sequence=1)
    assert notice.kind == UpdateKind.NOTICE
    assert notice.notices_sent == CUSTOMERS
    assert len(sms.outbox) == CUSTOMERS
    assert len({m.to for m in sms.outbox}) == CUSTOMERS
    assert incident.reference in sms.outbox[0].body

    # when an operator sends an update
    run_tasks(
        services.incident_update_send_now,
        incident=incident,
        message={"text": "A cable is being replaced.", "expected_end": "2026-05-01T12:00:00+00:00"},
        by=ops,
    )
    # then everyone hears it once, with the new estimate
    assert len(sms.outbox) == 2 * CUSTOMERS
    assert "12:00" in sms.outbox[-1].body

    # when every meter clears
    response = post(events_api, [event(m, 100, action="resolve") for m in meters], run_tasks)
    assert response.status_code == 200
    # then the incident is resolved and every customer gets one confirmation
    incident.refresh_from_db()
    assert incident.state == IncidentState.RESOLVED
    assert len(sms.outbox) == 3 * CUSTOMERS
    assert "restored" in sms.outbox[-1].body
    per_customer = {}
    for notice in IncidentNotice.objects.filter(incident=incident):
        per_customer.setdefault(notice.customer_id, []).append(notice.update.kind)
    assert len(per_customer) == CUSTOMERS
    assert all(
        sorted(kinds) == ["notice", "resolution", "update"] for kinds in per_customer.values()
    )
    assert Communication.objects.filter(source="incident").count() == 3 * CUSTOMERS

    # when every event is sent again
    events_before, audit_before = Event.objects.count(), AuditEvent.objects.count()
    response = post(
        events_api, [*triggers, *[event(m, 100, action="resolve") for m in meters]], run_tasks
    )
    # then nothing changes
    assert response.json()["duplicate"] == 500
    assert Event.objects.count() == events_before == 500
    assert Communication.objects.count() == 3 * CUSTOMERS
    assert len(sms.outbox) == 3 * CUSTOMERS
    assert Incident.objects.count() == 1

    # when a late trigger from before the restoration arrives (out of order)
    late = event(meters[0], 50, at=T0 + timedelta(seconds=50))
    response = post(events_api, [late], run_tasks)
    # then it joins the resolved incident and reopens nothing
    assert response.json()["results"][0]["incident"] == incident.reference
    incident.refresh_from_db()
    assert incident.state == IncidentState.RESOLVED
    assert Incident.objects.count() == 1
    assert len(sms.outbox) == 3 * CUSTOMERS
    assert AuditEvent.objects.count() == audit_before


def test_bad_events_in_a_batch_are_refused_by_field_and_the_good_ones_stored(events_api, run_tasks):
    meters = grid(devices=2, customers=4)
    good = event(meters[0], 1)
    unknown_asset = {**event(meters[1], 1), "asset": "no-such-meter"}
    bad_time = {**event(meters[1], 2), "occurred_at": "yesterday"}
    response = post(events_api, [good, unknown_asset, bad_time], run_tasks)
    assert response.status_code == 422
    body = response.json()
    assert response["Content-Type"].startswith("application/problem+json")
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"events[1].asset", "events[2].occurred_at"}
    assert [r["status"] for r in body["results"]] == ["created", "refused", "refused"]
    assert list(Event.objects.values_list("event_id", flat=True)) == [good["event_id"]]


def test_one_event_is_created_once_and_a_bad_one_is_a_422_naming_the_field(events_api, run_tasks):
    meters = grid(devices=1, customers=1)
    first = run_tasks(events_api.post, "/api/v1/events", event(meters[0], 1), format="json")
    again = run_tasks(events_api.post, "/api/v1/events", event(meters[0], 1), format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["status"] == "duplicate"
    bad = run_tasks(
        events_api.post,
        "/api/v1/events",
        {**event(meters[0], 2), "severity": "apocalyptic"},
        format="json",
    )
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["severity"]
    assert Event.objects.count() == 1


def test_events_need_the_events_scope(db, run_tasks):
    from rest_framework.test import APIClient

    from ccm.api.auth import api_key_create

    client = APIClient()
    key = api_key_create(name="other", scopes=["customers:read"]).key
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert client.post("/api/v1/events", {}, format="json").status_code == 403


def test_a_feeder_incident_suppresses_a_transformer_incident_beneath_it(run_tasks, settings):
    # given a rule that groups by transformer, and one that groups by feeder
    settings.CCM_INCIDENT_RULES = {
        "power_outage": {"group_wait": 3600},
        "gas_pressure_loss": {"group_by": "feeder", "group_wait": 3600},
    }
    meters = grid(devices=2, customers=2)
    run_tasks(services.events_ingest, items=[event(meters[0], 1)])
    settings.CCM_INCIDENT_RULES["power_outage"]["group_by"] = "transformer"
    run_tasks(services.events_ingest, items=[event(meters[1], 2)])
    run_tasks(
        services.events_ingest,
        items=[{**event(meters[1], 3), "event_type": "gas_pressure_loss"}],
    )
    below = Incident.objects.get(asset__kind="transformer")
    assert below.state == IncidentState.SUPPRESSED


def test_a_false_alarm_after_notices_sends_a_retraction(events_api, run_tasks, ops):
    meters = grid(devices=1, customers=3)
    post(events_api, [event(meters[0], 1)], run_tasks)
    incident = Incident.objects.get()
    run_tasks(services.incident_false_alarm, incident=incident, by=ops, note="A sensor misread.")
    incident.refresh_from_db()
    assert incident.state == IncidentState.FALSE_ALARM
    assert len(sms.outbox) == 6
    assert "ignore" in sms.outbox[-1].body


def test_a_new_severe_incident_alerts_operations(events_api, run_tasks, ops, settings):
    settings.CASES_ALERT_RECIPIENTS = {"operations": "control-room@example.org"}
    meters = grid(devices=1, customers=1)
    post(events_api, [event(meters[0], 1)], run_tasks)
    alerts = [m for m in mail.outbox if "control-room@example.org" in m.to]
    assert len(alerts) == 1
    assert Incident.objects.get().reference in alerts[0].subject


def test_a_new_severe_incident_is_pushed_to_the_operations_teams_devices_once(
    events_api, run_tasks, ops, settings, admin_user
):
    # given the operations team's app registered two installs under its internal account
    settings.CCM_OPS_PUSH_ACCOUNTS = ["OPS-TEAM"]
    settings.CCM_PUSH_BACKEND = "notifications.channels.push.LocmemPushBackend"
    push.outbox.clear()
    team = Customer.objects.create(external_ref="OPS-TEAM", name="Operations control room")
    for n in range(2):
        device_register(
            customer=team, platform="android", token=f"ops-{n}", app="ops", by=admin_user
        )
    meters = grid(devices=1, customers=1)
    # when a major outage opens an incident
    post(events_api, [event(meters[0], 1)], run_tasks)
    # then each ops device got one push naming it, and the alert row says so
    incident = Incident.objects.get()
    assert sorted(m.device.token for m in push.outbox) == ["ops-0", "ops-1"]
    assert all(incident.reference in m.title for m in push.outbox)
    assert all(m.data["link"].endswith(f"/incidents/{incident.reference}/") for m in push.outbox)
    assert incident.alert.push_result == "sent 2, failed 0"
    # and a second delivery of the task pushes nothing again
    assert incident_tasks.incident_alert_push(incident.alert.pk) == {}
    assert len(push.outbox) == 2


def test_the_operations_screen_shows_the_incident_and_its_actions_work(
    events_api, run_tasks, ops, client
):
    # given an incident whose customers were told
    meters = grid(devices=2, customers=4)
    post(events_api, [event(m, 1) for m in meters], run_tasks)
    incident = Incident.objects.get()
    client.force_login(ops)
    # when operations open the list and the incident
    listing = client.get("/incidents/")
    page = client.get(f"/incidents/{incident.reference}/")
    # then they see it with its affected customers by region and its notices
    assert incident.reference in listing.content.decode()
    html = page.content.decode()
    assert "region-north" in html
    assert "<td>4</td>" in html  # 4 customers, 4 notices
    # when they hold notices, then resolve it by hand
    client.post(f"/incidents/{incident.reference}/action", {"action": "hold"})
    incident.refresh_from_db()
    assert incident.held
    with_tasks = run_tasks(
        client.post,
        f"/incidents/{incident.reference}/action",
        {"action": "resolve", "message": "a blown fuse"},
    )
    assert with_tasks.status_code == 302
    incident.refresh_from_db()
    assert incident.state == IncidentState.RESOLVED
    assert "restored" in sms.outbox[-1].body
    assert len(sms.outbox) == 8


def test_customers_cannot_see_the_operations_screen(client, make_user):
    client.force_login(make_user("someone"))
    assert client.get("/incidents/").status_code == 403


def test_the_demo_outage_runs_the_whole_loop(run_tasks, settings, admin_user):
    # given the demo customers on the demo network
    from django.core.management import call_command

    from cases.incidents.demo import seed_network
    from notifications.demo import CUSTOMERS

    for spec in CUSTOMERS:
        customer_services.customer_upsert(**spec, by=admin_user)
    seed_network()
    # when the demo outage is simulated
    run_tasks(call_command, "simulate_outage")
    # then the customers under feeder 1 were told, then told it is restored
    incident = Incident.objects.get()
    assert incident.state == IncidentState.RESOLVED
    kinds = list(incident.updates.values_list("kind", flat=True))
    assert kinds == ["notice", "resolution"]
    assert incident.notices.count() == 6  # 3 customers, 2 updates


def test_a_customer_newly_under_the_incident_gets_the_current_state_once(
    events_api, run_tasks, ops
):
    # given an incident whose two customers were told
    from notifications.customers.assets import services as assets

    meters = grid(devices=1, customers=2)
    post(events_api, [event(meters[0], 1)], run_tasks)
    incident = Incident.objects.get()
    # when a third customer is connected under the feeder and an update goes out
    newcomer = Customer.objects.create(
        external_ref="NEW-1", name="Newcomer", postal_address=["1 New Row", "LS6 3QT"]
    )
    ContactPoint.objects.create(customer=newcomer, kind="phone", value="+447700999999")
    assets.service_points_upsert(
        items=[{"code": "sp-new", "customer": "NEW-1", "asset": meters[0]}]
    )
    run_tasks(
        services.incident_update_send_now,
        incident=incident,
        message={"text": "Engineers are on site.", "expected_end": "2026-05-01T11:00:00+00:00"},
        by=ops,
    )
    # then the old customers get the update, the newcomer the first notice with the new estimate
    update = incident.updates.get(sequence=2)
    templates = dict(update.notices.values_list("customer__external_ref", "template"))
    assert templates.pop("NEW-1") == "outage_notice"
    assert set(templates.values()) == {"outage_update"}
    to_newcomer = [m for m in sms.outbox if m.to == "+447700999999"]
    assert len(to_newcomer) == 1
    assert "11:00" in to_newcomer[0].body


def test_a_german_speaking_customer_gets_the_incident_notices_in_german(events_api, run_tasks):
    # given two customers under the feeder, one of whom reads German
    meters = grid(devices=1, customers=2)
    german, english = Customer.objects.order_by("pk")
    Customer.objects.filter(pk=german.pk).update(language="de")
    # when the outage is notified and then restored
    post(events_api, [event(meters[0], 1)], run_tasks)
    post(events_api, [event(meters[0], 2, action="resolve")], run_tasks)
    # then the German customer's notices come from the German catalog, the other's in English
    phone = {c.customer_id: c.value for c in ContactPoint.objects.all()}
    said = {}
    for message in sms.outbox:
        said.setdefault(message.to, []).append(message.body)
    notice, restored = said[phone[german.pk]]
    assert "Versorgung (Strom) in Ihrem Gebiet seit 06:00 unterbrochen" in notice
    assert "Ref. INC-" in notice
    assert "Strom wieder da seit" in restored
    assert said[phone[english.pk]][0].startswith(
        "Northwind: electricity supply off in your area since 06:00"
    )


def test_an_update_is_handed_over_a_chunk_per_task_and_completes_once(
    events_api, run_tasks, monkeypatch
):
    # given notices handed over 25 customers a task
    monkeypatch.setattr(services, "NOTICE_CHUNK", 25)
    meters = grid(devices=3, customers=CUSTOMERS)
    # when the outage is notified
    post(events_api, [event(m, 1) for m in meters], run_tasks)
    # then three tasks told all 60 customers once, and the update completed
    notice = Incident.objects.get().updates.get()
    assert notice.notices_sent == CUSTOMERS
    assert notice.completed_at is not None
    assert len({m.to for m in sms.outbox}) == len(sms.outbox) == CUSTOMERS
    # and handing it over again sends nobody anything
    run_tasks(services.incident_update_send, update_id=notice.pk)
    assert len(sms.outbox) == CUSTOMERS
