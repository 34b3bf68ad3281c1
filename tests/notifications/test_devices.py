"""Customers' push devices: register, list and revoke over the API (with the opt-in in the
consent ledger), and deactivate in the admin."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from ccm.models import AuditEvent
from notifications.customers.devices import device_register
from notifications.models import ConsentRecord, Customer, Device
from notifications.pipeline import compose
from tests.notifications.conftest import FCM_TOKEN, b64url, browser_keys, send_alert

pytestmark = pytest.mark.usefixtures("push_settings")

PROBLEM = "application/problem+json"


@pytest.fixture
def api(db):
    issued = api_key_create(name="mobile-app", scopes=["customers:read", "customers:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


def test_register_list_and_revoke_a_device_with_the_opt_in_in_the_ledger(api, customer):
    # given
    body = {
        "platform": "android",
        "app": "com.nw.app",
        "token": FCM_TOKEN,
        "opt_in": True,
        "categories": ["service", "transactional"],
    }
    # when: registered, then the same token again (the app starts again)
    first = api.post("/api/v1/customers/C-1/devices", body, format="json")
    again = api.post("/api/v1/customers/C-1/devices", {**body, "opt_in": None, "categories": []})
    # then: one device, the opt-in in the consent ledger for each category
    assert (first.status_code, again.status_code) == (201, 200)
    device = Device.objects.get()
    assert first.json()["id"] == again.json()["id"] == device.pk
    assert first.json()["address"] == f"device:{device.pk}"
    ledger = ConsentRecord.objects.filter(customer=customer, channel="push")
    assert sorted(ledger.values_list("category", "granted", "source", "legal_basis")) == [
        ("service", True, "api", "consent"),
        ("transactional", True, "api", "consent"),
    ]
    assert ledger.first().evidence == {
        "device": device.pk,
        "app": "com.nw.app",
        "platform": "android",
    }
    listed = api.get("/api/v1/customers/C-1/devices").json()
    assert [(d["id"], d["active"], d["token"]) for d in listed] == [(device.pk, True, FCM_TOKEN)]

    # when: revoked
    revoked = api.delete(f"/api/v1/customers/C-1/devices/{device.pk}")
    # then: kept, inactive, audited; the opt-in stays what the customer said
    assert revoked.status_code == 200
    assert revoked.json()["active"] is False
    device.refresh_from_db()
    assert not device.active
    assert device.deactivated_reason == "revoked through the API by api:mobile-app"
    event = AuditEvent.objects.get(action="device.deactivated")
    assert (event.subject_id, event.actor_label) == (str(device.pk), "api:mobile-app")
    assert ledger.count() == 2

    # when: the app registers the token again
    back = api.post("/api/v1/customers/C-1/devices", body, format="json")
    # then: the same device is active again
    assert (back.status_code, back.json()["id"], back.json()["active"]) == (200, device.pk, True)


def test_opt_out_is_recorded_and_push_is_no_longer_chosen(api, app_user, alert, integrator):
    # given: a device, then the customer says no to service pushes
    body = {"platform": "ios", "app": "com.nw.app", "token": FCM_TOKEN}
    api.post("/api/v1/customers/M-1/devices", body, format="json")
    api.post(
        "/api/v1/customers/M-1/devices",
        {**body, "opt_in": False, "categories": ["service"]},
        format="json",
    )
    # when
    communication = send_alert(app_user, integrator)
    compose.compose_chunk([communication.pk])
    # then
    communication.refresh_from_db()
    assert communication.state == "undeliverable"  # push was its only channel
    push_trace = [t for t in communication.decision_trace if t.get("channel") == "push"]
    assert push_trace == [
        {
            "channel": "push",
            "eligible": False,
            "reason": "the customer does not want service messages on this channel",
        }
    ]
    assert ConsentRecord.objects.get(channel="push").granted is False


def test_web_device_registers_with_its_subscription(api, customer):
    _, _, keys = browser_keys()
    endpoint = "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk-example"
    response = api.post(
        "/api/v1/customers/C-1/devices",
        {
            "platform": "web",
            "app": "https://portal.northwind.example",
            "subscription": {"endpoint": endpoint, "keys": keys},
        },
        format="json",
    )
    assert response.status_code == 201
    device = Device.objects.get()
    assert (device.token, device.p256dh, device.auth) == (endpoint, keys["p256dh"], keys["auth"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"platform": "android", "app": "a"}, "token"),
        ({"platform": "web", "app": "a", "token": "t"}, "subscription"),
        (
            {
                "platform": "web",
                "app": "a",
                "subscription": {
                    "endpoint": "https://push.example/1",
                    "keys": {"p256dh": "bm90LWEta2V5", "auth": b64url(b"sixteen-byte-key")},
                },
            },
            "subscription.keys.p256dh",
        ),
        (
            {
                "platform": "web",
                "app": "a",
                "subscription": {"endpoint": "http://10.0.0.5/", "keys": browser_keys()[2]},
            },
            "subscription.endpoint",
        ),
        ({"platform": "android", "app": "a", "token": "t", "opt_in": True}, "categories"),
        ({"platform": "pager", "app": "a", "token": "t"}, "platform"),
    ],
)
def test_bad_registrations_say_what_to_fix(api, customer, body, field):
    response = api.post("/api/v1/customers/C-1/devices", body, format="json")
    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert not Device.objects.exists()


def test_a_token_registered_for_another_customer_moves_to_them(api, customer, app_user):
    body = {"platform": "android", "app": "com.nw.app", "token": FCM_TOKEN}
    first = api.post("/api/v1/customers/C-1/devices", body, format="json").json()
    second = api.post("/api/v1/customers/M-1/devices", body, format="json").json()
    old = Device.objects.get(pk=first["id"])
    assert not old.active
    assert old.deactivated_reason == "registered again for customer M-1"
    assert Device.objects.get(active=True).customer == app_user
    assert second["id"] != first["id"]


def test_device_endpoints_need_the_customer_scopes_and_the_customers_device(db, api, customer):
    reader = APIClient()
    reader.credentials(
        HTTP_AUTHORIZATION=f"Api-Key {api_key_create(name='ro', scopes=['customers:read']).key}"
    )
    body = {"platform": "android", "app": "a", "token": FCM_TOKEN}
    assert reader.post("/api/v1/customers/C-1/devices", body, format="json").status_code == 403
    assert reader.get("/api/v1/customers/C-1/devices").status_code == 200
    device_id = api.post("/api/v1/customers/C-1/devices", body, format="json").json()["id"]
    assert reader.delete(f"/api/v1/customers/C-1/devices/{device_id}").status_code == 403
    Customer.objects.create(external_ref="C-2", name="Other")
    assert api.delete(f"/api/v1/customers/C-2/devices/{device_id}").status_code == 404
    assert Device.objects.get().active


def test_admin_deactivates_devices_through_the_service(admin_user, phone, client):
    client.force_login(admin_user)
    response = client.post(
        "/admin/notifications/device/",
        {"action": "deactivate", "_selected_action": [phone.pk]},
        follow=True,
    )
    assert response.status_code == 200
    phone.refresh_from_db()
    assert not phone.active
    assert phone.deactivated_reason == "deactivated in the admin by root"
    assert AuditEvent.objects.filter(action="device.deactivated", actor=admin_user).count() == 1
    # and the changelist finds it by the customer's reference among the inactive ones
    listed = client.get("/admin/notifications/device/", {"q": "M-1", "active__exact": "0"})
    assert f'name="_selected_action" value="{phone.pk}"' in listed.content.decode()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_the_same_token_registered_twice_at_once_is_one_device():
    # given: the app sends its registration twice at the same moment (a retry on a slow network)
    customer = Customer.objects.create(external_ref="C-7", name="Race Condition")
    barrier = threading.Barrier(2)
    outcomes: list[tuple[int, bool]] = []

    def register():
        try:
            barrier.wait()
            device, created = device_register(
                customer=customer, platform="android", token=FCM_TOKEN, app="com.nw.app"
            )
            outcomes.append((device.pk, created))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=register) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then: one device, made once and found once
    device = Device.objects.get()
    assert sorted(outcomes) == [(device.pk, False), (device.pk, True)]
