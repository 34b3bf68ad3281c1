"""The push channel: FCM HTTP v1 (through the library's HTTP mocks) and push in the pipeline.
Web Push is in test_webpush.py."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import mail
from google.auth import jwt
from googleapiclient.http import HttpMockSequence

from ccm.models import AuditEvent
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications import signals
from notifications.channels import push
from notifications.customers.devices import device_register
from notifications.models import Customer, Delivery
from notifications.pipeline import intake, services
from tests.notifications.conftest import (
    FCM_TOKEN,
    alert_bundle,
    ok,
    publish,
    send_alert,
)

pytestmark = pytest.mark.usefixtures("push_settings")

FCM_SEND = "https://fcm.googleapis.com/v1/projects/ccm-test/messages:send"


# --- FCM HTTP v1 ----------------------------------------------------------------------------


def fcm_failure(status: int, code: str, message: str, *, fcm_code="", field="") -> tuple:
    """An error as FCM HTTP v1 answers it: google.rpc.Status with FcmError/BadRequest details."""
    details: list[dict] = []
    if fcm_code:
        details.append(
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm_code}
        )
    if field:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": field, "description": message}],
            }
        )
    body = {"error": {"code": status, "message": message, "status": code, "details": details}}
    return {"status": str(status), "content-type": "application/json; charset=UTF-8"}, json.dumps(
        body
    )


UNREGISTERED = fcm_failure(
    404, "NOT_FOUND", "Requested entity was not found.", fcm_code="UNREGISTERED"
)


@pytest.fixture
def fcm(settings, monkeypatch):
    """Point the FCM transport at an HttpMockSequence answering with the given responses."""
    settings.CCM_PUSH_BACKEND = "notifications.channels.push.FcmWebPushBackend"

    def answer(*responses, credentials_file=None, project_id="ccm-test"):
        http = HttpMockSequence(list(responses))
        monkeypatch.setattr(
            push,
            "fcm_client",
            lambda: push.FcmClient(
                http=http, credentials_file=credentials_file, project_id=project_id
            ),
        )
        return http

    return answer


@pytest.fixture
def failures():
    seen: list[tuple[int, str]] = []

    def receiver(sender, delivery, reason, **kwargs):
        seen.append((delivery.pk, reason))

    signals.delivery_failed.connect(receiver, weak=False, dispatch_uid="test_push")
    yield seen
    signals.delivery_failed.disconnect(dispatch_uid="test_push")


def test_fcm_send_as_the_service_account_with_the_deep_link(
    fcm, service_account_key, app_user, phone, alert, integrator, sync_tasks
):
    # given: the key names project ccm-test; the mock serves the token, then FCM
    path, public_pem = service_account_key
    http = fcm(
        ok({"access_token": "ya29.fcm-token", "expires_in": 3599, "token_type": "Bearer"}),
        ok({"name": "projects/ccm-test/messages/0:1716-4242"}),
        credentials_file=str(path),
        project_id=None,
    )
    # when
    communication = sync_tasks(send_alert, app_user, integrator)
    # then: the token was asked for the FCM scope, the message posted to the key's project
    communication.refresh_from_db()
    delivery = communication.deliveries.get()
    token_uri, _, token_body, _ = http.request_sequence[0]
    assertion = parse_qs(token_body.decode("ascii"))["assertion"][0]
    claims = jwt.decode(assertion, certs=public_pem, audience=token_uri)
    assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    uri, method, body, headers = http.request_sequence[1]
    assert (method, uri.split("?")[0]) == ("POST", FCM_SEND)
    assert headers["authorization"] == "Bearer ya29.fcm-token"
    assert json.loads(body) == {
        "message": {
            "token": FCM_TOKEN,
            "notification": {
                # (addressed from the customer record, whatever the alert's data says)
                "title": "Balance for Mo Bile",
                "body": "You owe £12.50. Tap to read the letter.",
            },
            "data": {
                "link": communication.data["portal_url"],
                "communication_id": str(communication.pk),
                "delivery_id": str(delivery.pk),
            },
        }
    }
    assert communication.data["portal_url"].startswith("http://127.0.0.1:8000/p/")
    assert (delivery.channel, delivery.address) == ("push", f"device:{phone.pk}")
    assert (delivery.state, delivery.provider_message_id) == (
        "sent",
        "projects/ccm-test/messages/0:1716-4242",
    )
    assert delivery.meta["device"] == phone.pk
    assert communication.state == "sent"


def test_unregistered_token_deactivates_the_device_and_fails_the_delivery(
    fcm, app_user, phone, alert, integrator, sync_tasks, failures
):
    # given
    fcm(UNREGISTERED)
    # when
    communication = sync_tasks(send_alert, app_user, integrator)
    # then: the delivery failed with FCM's reason, for the fallback to move on
    delivery = communication.deliveries.get()
    assert delivery.state == "failed"
    assert delivery.last_error == "FCM 404 UNREGISTERED: Requested entity was not found."
    assert failures == [(delivery.pk, delivery.last_error)]
    # and the device is deactivated, audited, and no longer chosen
    phone.refresh_from_db()
    assert not phone.active
    assert phone.deactivated_reason == delivery.last_error
    event = AuditEvent.objects.get(action="device.deactivated")
    assert event.after["reason"] == delivery.last_error
    later = sync_tasks(send_alert, app_user, integrator)
    later.refresh_from_db()
    assert later.state == "undeliverable"
    assert {"channel": "push", "eligible": False, "reason": "no active device"} in (
        later.decision_trace
    )


@pytest.mark.parametrize(
    ("response", "state", "device_active"),
    [
        (
            fcm_failure(429, "RESOURCE_EXHAUSTED", "Quota", fcm_code="QUOTA_EXCEEDED"),
            "pending",
            True,
        ),
        (fcm_failure(500, "INTERNAL", "Internal error", fcm_code="INTERNAL"), "pending", True),
        (fcm_failure(503, "UNAVAILABLE", "The service is currently unavailable."), "pending", True),
        (fcm_failure(401, "UNAUTHENTICATED", "Request had invalid credentials."), "failed", True),
        (
            fcm_failure(403, "PERMISSION_DENIED", "Mismatch", fcm_code="SENDER_ID_MISMATCH"),
            "failed",
            True,
        ),
        (
            fcm_failure(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                fcm_code="INVALID_ARGUMENT",
                field="message.token",
            ),
            "failed",
            False,
        ),
        (
            fcm_failure(
                400,
                "INVALID_ARGUMENT",
                "Invalid value at 'message.data[0].value'",
                fcm_code="INVALID_ARGUMENT",
                field="message.data[0].value",
            ),
            "failed",
            True,
        ),
    ],
)
def test_fcm_errors_retry_fail_or_deactivate(
    fcm, app_user, phone, alert, integrator, sync_tasks, response, state, device_active
):
    fcm(response)
    communication = sync_tasks(send_alert, app_user, integrator)
    delivery = communication.deliveries.get()
    phone.refresh_from_db()
    assert (delivery.state, phone.active) == (state, device_active)
    assert f"FCM {response[0]['status']}" in delivery.last_error
    if state == "pending":
        assert delivery.next_attempt_at is not None


# --- push in the pipeline -------------------------------------------------------------------


def test_regulatory_notice_to_a_customer_with_a_device_also_goes_by_email(
    author, reviewer, customer, admin_user, integrator, sync_tasks
):
    # given: a regulatory template with a push rendition; the customer has a device and email
    publish(alert_bundle("notice", category="regulatory"), author=author, reviewer=reviewer)
    device, _ = device_register(
        customer=customer, platform="ios", token=FCM_TOKEN, app="com.nw.app", by=admin_user
    )
    # when: urgent, so push comes first
    communication = sync_tasks(send_alert, customer, integrator, code="notice", urgency="high")
    # then
    communication.refresh_from_db()
    assert sorted(communication.deliveries.values_list("channel", "address", "state")) == [
        ("email", "ada@example.org", "sent"),
        ("push", device.address, "sent"),
    ]
    assert {
        "channel": "email",
        "decision": "added",
        "reason": "a regulatory notice must reach a durable medium",
    } in communication.decision_trace
    assert [m.to for m in mail.outbox] == [["Ada Lovelace <ada@example.org>"]]
    assert [m.device for m in push.outbox] == [device]


def test_regulatory_notice_never_goes_by_push_alone(
    author, reviewer, app_user, phone, integrator, sync_tasks
):
    publish(alert_bundle("notice", category="regulatory"), author=author, reviewer=reviewer)
    communication = sync_tasks(send_alert, app_user, integrator, code="notice", urgency="high")
    communication.refresh_from_db()
    assert communication.state == "undeliverable"
    assert push.outbox == []


def test_outage_notice_reaches_sent_by_push_with_its_portal_link(
    author, reviewer, app_user, phone, integrator, sync_tasks, client
):
    # given: the library's outage notice; the customer has a phone with the app, no email
    version = publish(read_folder(LIBRARY / "outage_notice"), author=author, reviewer=reviewer)
    data = dict(version.content["samples"]["default"])
    data.pop("portal_url", None)
    # when
    communication, _ = sync_tasks(
        services.communication_request,
        template_code="outage_notice",
        customer=app_user,
        data=data,
        client="t",
        by=integrator,
    )
    # then
    communication.refresh_from_db()
    assert communication.state == "sent"
    [message] = push.outbox
    assert message.device == phone
    assert message.title == "Planned electricity interruption"
    assert message.body == communication.rendered["push"]["body"]
    assert message.body.startswith("Your electricity will be off on")
    assert message.data == {
        "link": communication.data["portal_url"],
        "communication_id": str(communication.pk),
        "delivery_id": str(communication.deliveries.get().pk),
    }
    # and the link opens the notice
    page = client.get(urlsplit(message.data["link"]).path)
    assert page.status_code == 200
    communication.refresh_from_db()
    assert communication.state == "viewed"


def test_a_document_without_a_link_in_its_data_gets_one_link_for_every_attempt(
    author, reviewer, app_user, phone, integrator, sync_tasks, settings, monkeypatch
):
    # given: a statement (the PDF attached to email, no portal link in its data) whose first
    # push attempt fails for a moment
    version = publish(read_folder(LIBRARY / "monthly_statement"), author=author, reviewer=reviewer)
    data = dict(version.content["samples"]["default"])
    # (the statement is for the app user's own account: its account number is an identity field)
    Customer.objects.filter(pk=app_user.pk).update(external_ref=data["account_number"])
    app_user.refresh_from_db()
    attempts: list[push.PushMessage] = []

    def flaky(self, message):
        attempts.append(message)
        if len(attempts) == 1:
            raise push.TransientSendError("FCM 503 UNAVAILABLE")
        return "locmem-1"

    monkeypatch.setattr(push.LocmemPushBackend, "send", flaky)
    communication, _ = sync_tasks(
        services.communication_request,
        template_code="monthly_statement",
        customer=app_user,
        data=data,
        client="t",
        by=integrator,
    )
    delivery = communication.deliveries.get()
    assert delivery.state == "pending"
    # when: the retry
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=None)
    services.delivery_dispatch_run(delivery.pk)
    # then: both attempts carried the same fresh portal link, kept on the delivery
    delivery.refresh_from_db()
    assert delivery.state == "sent"
    links = {m.data["link"] for m in attempts}
    assert links == {delivery.meta["link"]}
    assert delivery.meta["link"].startswith("http://127.0.0.1:8000/p/")
    assert "portal_url" not in communication.data


def test_bulk_path_sends_to_devices_too(author, reviewer, app_user, phone, integrator, sync_tasks):
    # given: a mass "document ready" notice; one customer can only be reached by push
    publish(read_folder(LIBRARY / "document_ready"), author=author, reviewer=reviewer)
    data = {
        "customer": {"name": "Mo Bile"},
        "reference": "DOC-00001",
        "document_title": "Your annual statement",
        "document_date": "2026-04-12",
        "portal_url": "https://portal.example/documents/DOC-00001",
    }
    # when
    (pk,) = sync_tasks(
        intake.communications_request_bulk,
        template_code="document_ready",
        items=[{"customer": app_user, "data": data}],
        client="campaign-7",
        by=integrator,
    )
    # then
    delivery = Delivery.objects.get(communication_id=pk)
    assert (delivery.channel, delivery.address, delivery.state) == ("push", phone.address, "sent")
    assert [m.data["link"] for m in push.outbox] == [data["portal_url"]]


def test_make_run_prints_pushes_to_the_console(
    settings, app_user, phone, alert, integrator, sync_tasks, capsys
):
    settings.CCM_PUSH_BACKEND = "notifications.channels.push.ConsolePushBackend"
    communication = sync_tasks(send_alert, app_user, integrator)
    communication.refresh_from_db()
    assert communication.state == "sent"
    out = capsys.readouterr().out
    assert f"push to android device {phone.pk} (com.nw.app): 'Balance for Mo Bile'" in out
