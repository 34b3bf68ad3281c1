"""Webhook subscriptions through the API and the admin, and where webhooks may go."""

from __future__ import annotations

import socket

import pytest
from django.test import Client
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create, api_key_revoke
from ccm.models import AuditEvent
from notifications.models import WebhookDelivery, WebhookSubscription
from notifications.pipeline import services
from notifications.webhooks import send as webhook_send
from notifications.webhooks import services as webhooks
from tests.notifications.webhook_receiver import WebhookReceiver

PROBLEM = "application/problem+json"
DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}
SCOPES = ["webhooks:read", "webhooks:write"]


@pytest.fixture(autouse=True)
def _loopback_allowed(settings):
    settings.CCM_WEBHOOK_ALLOW_PRIVATE = True
    settings.CCM_WEBHOOK_REQUIRE_HTTPS = False
    settings.CCM_WEBHOOK_TIMEOUT_S = 1.0


@pytest.fixture
def receiver():
    with WebhookReceiver() as running:
        yield running


def key_client(*scopes: str, name: str = "core-banking") -> tuple[APIClient, str]:
    issued = api_key_create(name=name, scopes=list(scopes))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client, f"key:{issued.api_key.pk}"


@pytest.fixture
def api(db):
    return key_client(*SCOPES)[0]


def test_create_returns_the_secret_once_and_nothing_shows_it_again(api):
    # when
    created = api.post(
        "/api/v1/webhooks",
        {"url": "http://127.0.0.1:9/hook", "events": ["sent", "failed"], "description": "crm"},
        format="json",
    )
    # then
    assert created.status_code == 201
    body = created.json()
    secret = body["secret"]
    assert secret.startswith("whsec_")
    assert len(secret) > 40
    assert body["events"] == ["sent", "failed"]
    pk = body["id"]
    listed = api.get("/api/v1/webhooks")
    detail = api.get(f"/api/v1/webhooks/{pk}")
    patched = api.patch(f"/api/v1/webhooks/{pk}", {"events": ["delivered"]}, format="json")
    for response in (listed, detail, patched):
        assert response.status_code == 200
        assert secret.encode() not in response.content
        assert b'"secret"' not in response.content
    assert [s["id"] for s in listed.json()["results"]] == [pk]
    actions = AuditEvent.objects.filter(
        subject_type="notifications.webhooksubscription", subject_id=str(pk)
    ).values_list("action", flat=True)
    assert list(actions) == ["webhook_subscription.created", "webhook_subscription.updated"]
    assert secret not in str(AuditEvent.objects.values_list("after", flat=True))
    assert patched.json()["events"] == ["delivered"]


def test_events_default_to_all_and_come_back_in_a_stable_order(api):
    body = api.post("/api/v1/webhooks", {"url": "http://127.0.0.1:9/"}, format="json").json()
    assert body["events"] == [
        "composed",
        "sent",
        "delivered",
        "viewed",
        "actioned",
        "failed",
        "undeliverable",
    ]


def test_another_clients_subscriptions_are_invisible(api, db):
    theirs, _ = key_client(*SCOPES, name="billing")
    pk = theirs.post("/api/v1/webhooks", {"url": "http://127.0.0.1:9/"}, format="json").json()["id"]
    assert api.get("/api/v1/webhooks").json()["results"] == []
    assert api.get(f"/api/v1/webhooks/{pk}").status_code == 404
    assert api.patch(f"/api/v1/webhooks/{pk}", {"active": False}, format="json").status_code == 404
    assert api.delete(f"/api/v1/webhooks/{pk}").status_code == 404
    assert api.get(f"/api/v1/webhooks/{pk}/deliveries").status_code == 404
    assert WebhookSubscription.objects.get(pk=pk).active


def test_scopes_are_required(db):
    reader, _ = key_client("webhooks:read")
    writer, _ = key_client("webhooks:write", name="writer")
    refused = reader.post("/api/v1/webhooks", {"url": "http://127.0.0.1:9/"}, format="json")
    assert refused.status_code == 403
    assert "webhooks:write" in refused.json()["detail"]
    assert writer.get("/api/v1/webhooks").status_code == 403
    assert reader.get("/api/v1/webhooks").status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"url": "ftp://example.org/x"}, "url", "http"),
        ({"url": "http://127.0.0.1:9/", "events": ["opened"]}, "events[0]", "not a valid"),
        ({"url": "http://127.0.0.1:9/", "events": []}, "events", "empty"),
        ({"url": "http://user:pw@127.0.0.1:9/"}, "url", "credentials"),
        ({"url": "http://127.0.0.1:9/#x"}, "url", "fragment"),
        ({"url": "http://["}, "url", "malformed"),
        ({"url": "https://[::1/hook"}, "url", "malformed"),
        ({}, "url", "required"),
    ],
)
def test_bad_input_is_a_problem_naming_the_field(api, body, field, says):
    response = api.post("/api/v1/webhooks", body, format="json")
    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    errors = response.json()["errors"]
    assert errors[0]["field"] == field
    assert says in errors[0]["message"]
    assert not WebhookSubscription.objects.exists()


def test_a_host_that_does_not_resolve_is_refused(api, monkeypatch):
    def nxdomain(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", nxdomain)  # no DNS server is asked in tests
    response = api.post("/api/v1/webhooks", {"url": "https://hooks.example/"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {
            "field": "url",
            "message": "The host 'hooks.example' does not resolve "
            "([Errno -2] Name or service not known).",
        }
    ]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://203.0.113.9/hook", "https://"),
        ("https://127.0.0.1/hook", "127.0.0.1, a private"),
        ("https://10.1.2.3/hook", "10.1.2.3, a private"),
        ("https://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("https://[::1]/hook", "::1"),
        ("https://[::ffff:127.0.0.1]/hook", "private"),
        # IPv4 wrapped in IPv6: compatible, NAT64 (loopback, cloud metadata), 6to4, Teredo
        ("https://[::7f00:1]/hook", "private"),
        ("https://[64:ff9b::7f00:1]/hook", "private"),
        ("https://[64:ff9b::a9fe:a9fe]/latest/meta-data", "private"),
        ("https://[64:ff9b:1::a00:1]/hook", "private"),
        ("https://[2002:7f00:1::]/hook", "private"),
        ("https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook", "private"),
        ("https://localhost/hook", "private"),
    ],
)
def test_production_refuses_plain_http_and_internal_addresses(api, settings, url, says):
    settings.CCM_WEBHOOK_REQUIRE_HTTPS = True
    settings.CCM_WEBHOOK_ALLOW_PRIVATE = False
    response = api.post("/api/v1/webhooks", {"url": url}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "url"
    assert says in response.json()["errors"][0]["message"]


def test_an_address_refused_at_send_time_is_not_contacted(
    letter, customer, integrator, receiver, sync_tasks, settings, admin_user
):
    # given a subscription made while loopback was allowed
    subscription = webhooks.webhook_subscription_create(
        url=receiver.url, client="", events=["composed"], by=admin_user
    )
    # when the policy says no (as it would if the name now resolved inside)
    settings.CCM_WEBHOOK_ALLOW_PRIVATE = False
    sync_tasks(
        services.communication_request,
        template_code="letter",
        customer=customer,
        data=DATA,
        client="t",
        by=integrator,
    )
    # then the attempt is logged as refused and nothing reached the receiver
    row = subscription.deliveries.get()
    assert row.state == "pending"
    assert "private, loopback or reserved" in row.last_error
    assert receiver.received == []


def test_paused_deleted_or_revoked_subscriptions_receive_nothing(
    letter, customer, integrator, receiver, sync_tasks, db
):
    api, client = key_client(*SCOPES, "communications:write")
    pk = api.post("/api/v1/webhooks", {"url": receiver.url}, format="json").json()["id"]

    def compose():
        sync_tasks(
            services.communication_request,
            template_code="letter",
            customer=customer,
            data=DATA,
            client=client,
            by=integrator,
        )

    # paused
    assert (
        api.patch(f"/api/v1/webhooks/{pk}", {"active": False}, format="json").json()["active"]
        is False
    )
    compose()
    assert not WebhookDelivery.objects.exists()
    # active again
    api.patch(f"/api/v1/webhooks/{pk}", {"active": True}, format="json")
    compose()
    assert WebhookDelivery.objects.count() == 2  # composed and sent
    # its key revoked
    subscription = WebhookSubscription.objects.get(pk=pk)
    api_key_revoke(api_key=subscription.api_key)
    compose()
    assert WebhookDelivery.objects.count() == 2
    assert len(receiver.received) == 2


def test_delete_keeps_the_log_and_fails_what_was_not_sent(
    api, letter, customer, integrator, receiver, sync_tasks, admin_user
):
    # given an event waiting for its retry
    created = api.post("/api/v1/webhooks", {"url": receiver.url}, format="json").json()
    subscription = WebhookSubscription.objects.get(pk=created["id"])
    receiver.script = [500]
    sync_tasks(
        services.communication_request,
        template_code="letter",
        customer=customer,
        data=DATA,
        client=subscription.client,
        by=integrator,
    )
    # when the subscription is deleted
    assert api.delete(f"/api/v1/webhooks/{subscription.pk}").status_code == 204
    # then it is gone from the API, and its pending events are failed when they come due
    assert api.get(f"/api/v1/webhooks/{subscription.pk}").status_code == 404
    assert api.get("/api/v1/webhooks").json()["results"] == []
    from notifications.webhooks.send import webhook_delivery_send

    failed = WebhookDelivery.objects.get(state="pending")
    WebhookDelivery.objects.filter(pk=failed.pk).update(next_attempt_at=None)
    assert webhook_delivery_send(failed.pk) == "failed"
    failed.refresh_from_db()
    assert failed.last_error.startswith("not sent: the subscription is inactive, deleted")
    assert len(receiver.received) == 2  # the first try of each; nothing since
    assert WebhookDelivery.objects.count() == 2  # the log is kept
    # and replaying is refused with a problem
    response = api.post(f"/api/v1/webhooks/{subscription.pk}/deliveries/{failed.pk}/replay")
    assert response.status_code == 404  # a deleted subscription is not the caller's anymore
    with pytest.raises(webhooks.WebhookError, match="inactive"):
        webhooks.webhook_delivery_replay(delivery=failed, by=admin_user)


def test_replay_of_an_inactive_subscription_is_a_conflict(
    api, letter, customer, integrator, receiver, sync_tasks
):
    created = api.post("/api/v1/webhooks", {"url": receiver.url, "events": ["composed"]})
    subscription = WebhookSubscription.objects.get(pk=created.json()["id"])
    sync_tasks(
        services.communication_request,
        template_code="letter",
        customer=customer,
        data=DATA,
        client=subscription.client,
        by=integrator,
    )
    row = subscription.deliveries.get()
    api.patch(f"/api/v1/webhooks/{subscription.pk}", {"active": False}, format="json")
    response = api.post(f"/api/v1/webhooks/{subscription.pk}/deliveries/{row.pk}/replay")
    assert response.status_code == 409
    assert response["Content-Type"] == PROBLEM
    assert "activate it" in response.json()["detail"]


def test_delivery_log_filters_by_state(api, letter, customer, integrator, receiver, sync_tasks):
    created = api.post("/api/v1/webhooks", {"url": receiver.url}, format="json").json()
    receiver.script = [500]
    sync_tasks(
        services.communication_request,
        template_code="letter",
        customer=customer,
        data=DATA,
        client=WebhookSubscription.objects.get().client,
        by=integrator,
    )
    url = f"/api/v1/webhooks/{created['id']}/deliveries"
    assert [d["event_type"] for d in api.get(url).json()["results"]] == ["sent", "composed"]
    pending = api.get(url, {"state": "pending"}).json()["results"]
    assert [(d["event_type"], d["attempt_log"][0]["status_code"]) for d in pending] == [
        ("composed", 500)
    ]
    assert api.get(url, {"state": "nope"}).status_code == 400


def test_admin_creates_with_the_secret_shown_once_and_replays(
    admin_user, ops, agent, letter, customer, integrator, receiver, sync_tasks
):
    # given staff subscribing an internal system in the admin
    browser = Client()
    browser.force_login(admin_user)
    response = browser.post(
        "/admin/notifications/webhooksubscription/add/",
        {"url": receiver.url, "events": ["composed"], "description": "dwh", "active": "on"},
        follow=True,
    )
    subscription = WebhookSubscription.objects.get()
    assert subscription.client == ""
    assert subscription.secret.encode() in response.content
    assert (
        subscription.secret.encode()
        not in browser.get(
            f"/admin/notifications/webhooksubscription/{subscription.pk}/change/"
        ).content
    )
    receiver.secret = subscription.secret
    sync_tasks(
        services.communication_request,
        template_code="letter",
        customer=customer,
        data=DATA,
        client="anyone",
        by=integrator,
    )
    row = WebhookDelivery.objects.get()
    # when operations replays it from the delivery log
    browser.force_login(ops)
    page = browser.get(f"/admin/notifications/webhookdelivery/{row.pk}/change/")
    assert page.status_code == 200
    assert b"answered 200" in page.content  # the receiver's answer, in the log
    sync_tasks(
        browser.post,
        "/admin/notifications/webhookdelivery/",
        {"action": "replay", "_selected_action": [row.pk]},
    )
    # then the receiver got the same event twice
    assert [r.headers["CCM-Webhook-Id"] for r in receiver.received] == [str(row.event_id)] * 2
    assert all(r.verified for r in receiver.received)
    # and a service agent may not see the log at all
    browser.force_login(agent)
    assert browser.get("/admin/notifications/webhookdelivery/").status_code == 403


def test_the_openapi_schema_documents_the_webhook_and_its_signature(db, client):
    text = client.get("/api/schema/").content.decode()
    assert "openapi: 3.1.0" in text
    assert "communicationStatus" in text
    assert "CCM-Webhook-Signature" in text
    assert "/api/v1/webhooks/{id}/deliveries/{delivery_id}/replay" in text


@pytest.fixture
def self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for localhost that no one trusts."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


def test_an_https_receiver_with_an_untrusted_certificate_gets_nothing(
    letter, customer, integrator, sync_tasks, admin_user, self_signed
):
    # given an https endpoint whose certificate does not verify
    with WebhookReceiver(tls=self_signed) as receiver:
        subscription = webhooks.webhook_subscription_create(
            url=receiver.url, client="", events=["composed"], by=admin_user
        )
        # when an event is sent to it
        sync_tasks(
            services.communication_request,
            template_code="letter",
            customer=customer,
            data=DATA,
            client="t",
            by=integrator,
        )
    # then TLS refused it (no plaintext fallback) and the attempt says why
    row = subscription.deliveries.get()
    assert row.state == "pending"
    assert "CERTIFICATE_VERIFY_FAILED" in row.last_error
    assert receiver.received == []


def test_a_name_that_now_resolves_to_a_wrapped_internal_address_is_not_contacted(
    settings, monkeypatch
):
    # given a name checked while it resolved to a public address
    settings.CCM_WEBHOOK_ALLOW_PRIVATE = False
    answers = {"hooks.example": "2606:4700::1111"}

    def resolve(host, port, *args, **kwargs):
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (answers[host], port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    assert webhooks.webhook_url_check("https://hooks.example/h") == "https://hooks.example/h"
    # when it resolves to loopback behind the NAT64 prefix at send time
    answers["hooks.example"] = "64:ff9b::7f00:1"
    answer = webhook_send.post("https://hooks.example/h", b"{}", {})
    # then nothing is contacted and the attempt says why
    assert answer.status is None
    assert "64:ff9b::7f00:1, a private, loopback or reserved address" in answer.error
