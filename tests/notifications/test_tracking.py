"""Email tracking end to end: real-shaped Postmark and Mailgun payloads posted to Anymail's own
webhook endpoints, stored as DeliveryEvents, then applied by `delivery_event_process`.

The payloads in esp_payloads/ follow the ESPs' documented webhook examples (Postmark's Delivery,
Bounce, SpamComplaint and Open webhooks; Mailgun's JSON "delivered" and "failed" events); each
test puts the delivery's id into the metadata, as the email backend does when sending.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from anymail.signals import tracking as anymail_tracking
from django.utils import timezone
from django_q.conf import Conf

from ccm.models import AuditEvent
from documents.models import Template
from notifications import signals
from notifications.channels.tracking import DISPATCH_UID, delivery_event_process, tracking_received
from notifications.models import (
    Communication,
    CommunicationStep,
    ContactPoint,
    Customer,
    Delivery,
    DeliveryEvent,
    Suppression,
)
from notifications.pipeline import history

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.notifications.tracking_urls")]

PAYLOADS = Path(__file__).parent / "esp_payloads"
POSTMARK_URL = "/anymail/postmark/tracking/"
MAILGUN_URL = "/anymail/mailgun/tracking/"
WEBHOOK_SECRET = "user:pass"
MAILGUN_SIGNING_KEY = "key-0123456789abcdef0123456789abcdef"
POSTMARK_MESSAGE_ID = "883953f4-6105-42a2-a16a-77a8eac79483"
ADDRESS = "jane.doe@example.com"


@pytest.fixture(autouse=True)
def _tracking_wired(settings):
    settings.ANYMAIL = {
        **settings.ANYMAIL,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_SIGNING_KEY,
    }
    # NotificationsConfig.ready() connects the receiver once the app is wired; until then (and
    # only then) the tests connect it themselves.
    wired = anymail_tracking.has_listeners()
    if not wired:
        anymail_tracking.connect(tracking_received, dispatch_uid=DISPATCH_UID)
    yield
    if not wired:
        anymail_tracking.disconnect(dispatch_uid=DISPATCH_UID)


@pytest.fixture
def customer(db):
    customer = Customer.objects.create(external_ref="C-1", name="Jane Doe")
    # Spelled differently from what the ESP reports: matching ignores case.
    ContactPoint.objects.create(
        customer=customer, kind="email", value="Jane.Doe@example.com", is_primary=True
    )
    return customer


@pytest.fixture
def communication(customer):
    template = Template.objects.create(code="statement", name="Statement", category="service")
    return Communication.objects.create(
        customer=customer,
        template=template,
        data={},
        category="service",
        client="test",
        state="dispatching",
    )


@pytest.fixture
def delivery(communication):
    return Delivery.objects.create(
        communication=communication,
        channel="email",
        address="Jane.Doe@example.com",
        message_id="<ccm-1@bank.example>",
        provider="postmark",
        provider_message_id=POSTMARK_MESSAGE_ID,
        state="sending",
    )


@pytest.fixture
def failures():
    received = []

    def receiver(sender, delivery, reason, **kwargs):
        received.append((delivery.pk, reason))

    signals.delivery_failed.connect(receiver)
    yield received
    signals.delivery_failed.disconnect(receiver)


def payload(name: str, delivery: Delivery | None = None) -> dict:
    body = json.loads((PAYLOADS / f"{name}.json").read_text())
    if delivery is not None:
        metadata = (
            body["event-data"]["user-variables"] if "event-data" in body else body["Metadata"]
        )
        metadata["delivery_id"] = str(delivery.pk)
        metadata["communication_id"] = str(delivery.communication_id)
    return body


def basic_auth(credentials: str) -> dict:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(credentials.encode()).decode()}


def post_postmark(client, body: dict, credentials: str | None = WEBHOOK_SECRET):
    headers = basic_auth(credentials) if credentials else {}
    return client.post(
        POSTMARK_URL, data=json.dumps(body), content_type="application/json", **headers
    )


def post_mailgun(client, body: dict, signing_key: str = MAILGUN_SIGNING_KEY):
    signature = body["signature"]
    signature["signature"] = hmac.new(
        signing_key.encode(),
        f"{signature['timestamp']}{signature['token']}".encode(),
        hashlib.sha256,
    ).hexdigest()
    return client.post(
        MAILGUN_URL,
        data=json.dumps(body),
        content_type="application/json",
        **basic_auth(WEBHOOK_SECRET),
    )


def process_all() -> None:
    for pk in DeliveryEvent.objects.order_by("id").values_list("pk", flat=True):
        delivery_event_process(pk)


def comm_state(communication: Communication) -> str:
    # refresh_from_db() cannot set a protected FSM field; a fresh instance can.
    return Communication.objects.get(pk=communication.pk).state


# --- storing -----------------------------------------------------------------------------------


def test_postmark_delivery_is_stored_and_linked_by_metadata(client, delivery):
    response = post_postmark(client, payload("postmark_delivery", delivery))

    assert response.status_code == 200
    event = DeliveryEvent.objects.get()
    assert event.delivery == delivery
    assert event.provider == "postmark"
    assert event.event_type == "delivered"
    assert event.recipient == ADDRESS
    assert event.occurred_at == datetime(2024, 11, 5, 16, 33, 54, 907025, tzinfo=UTC)
    assert "250 2.0.0 OK" in event.description
    # Postmark's Delivery webhook has no event id: the payload's hash stands in for it.
    assert len(event.event_id) == 64
    assert event.raw["MessageID"] == POSTMARK_MESSAGE_ID
    assert event.processed_at is None


def test_event_without_metadata_is_matched_by_provider_message_id(client, delivery):
    body = payload("postmark_bounce_hard")
    del body["Metadata"]

    post_postmark(client, body)

    event = DeliveryEvent.objects.get()
    assert event.delivery == delivery
    assert event.event_id == "4323372036854775807"
    assert event.event_type == "bounced"
    assert event.hard is True


def test_event_for_an_unknown_delivery_is_stored_unlinked(client, db):
    body = payload("postmark_open")
    body["Metadata"] = {}

    assert post_postmark(client, body).status_code == 200

    assert DeliveryEvent.objects.get().delivery is None


def test_mailgun_events_are_stored_with_the_message_id_header(client, delivery):
    post_mailgun(client, payload("mailgun_delivered", delivery))

    event = DeliveryEvent.objects.get()
    assert event.delivery == delivery
    assert event.provider == "mailgun"
    assert event.event_id == "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
    assert event.event_type == "delivered"
    assert event.message_id == "<20241105163354.1.ABCDEF0123456789@mg.bank.example>"


def test_mailgun_event_without_metadata_is_matched_by_our_message_id_header(client, delivery):
    # given the delivery was not recorded as sent yet (no provider message id)
    Delivery.objects.filter(pk=delivery.pk).update(provider_message_id="")
    body = payload("mailgun_delivered")
    body["event-data"]["user-variables"] = {}
    # Mailgun reports the Message-ID header we set, without its angle brackets.
    body["event-data"]["message"]["headers"]["message-id"] = delivery.message_id.strip("<>")

    post_mailgun(client, body)

    assert DeliveryEvent.objects.get().delivery == delivery


@pytest.mark.parametrize("credentials", [None, "user:wrong"])
def test_post_without_the_webhook_secret_is_rejected(client, delivery, credentials):
    response = post_postmark(client, payload("postmark_bounce_hard", delivery), credentials)

    assert response.status_code == 400
    assert not DeliveryEvent.objects.exists()


def test_mailgun_post_with_a_bad_signature_is_rejected(client, delivery):
    response = post_mailgun(
        client, payload("mailgun_failed_permanent", delivery), signing_key="not-the-key"
    )

    assert response.status_code == 400
    assert not DeliveryEvent.objects.exists()


@pytest.mark.parametrize("name", ["postmark_delivery", "postmark_bounce_hard"])
def test_same_event_posted_twice_is_stored_and_enqueued_once(
    client, delivery, name, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as first:
        assert post_postmark(client, payload(name, delivery)).status_code == 200
    with django_capture_on_commit_callbacks() as second:
        assert post_postmark(client, payload(name, delivery)).status_code == 200

    assert DeliveryEvent.objects.count() == 1
    assert len(first) == 1
    assert second == []


def test_autoresponder_is_acknowledged_but_not_stored(client, delivery):
    body = payload("postmark_bounce_soft", delivery)
    body.update(Type="AutoResponder", TypeCode=2, Name="Auto responder")

    assert post_postmark(client, body).status_code == 200

    assert not DeliveryEvent.objects.exists()


# --- processing --------------------------------------------------------------------------------


def test_delivered_moves_delivery_and_communication_forward(client, delivery, communication):
    post_postmark(client, payload("postmark_delivery", delivery))

    process_all()

    delivery.refresh_from_db()
    assert delivery.state == "delivered"
    assert delivery.delivered_at == datetime(2024, 11, 5, 16, 33, 54, 907025, tzinfo=UTC)
    comm = Communication.objects.get(pk=communication.pk)
    assert comm.state == "delivered"
    assert comm.sent_at is not None
    assert DeliveryEvent.objects.get().processed_at is not None
    assert [
        e.action
        for e in history.communication_history(comm)
        if e.action in ("delivery.delivered", "communication.delivered")
    ] == ["delivery.delivered", "communication.delivered"]


def test_delivered_end_to_end_through_the_task_queue(
    client, delivery, communication, monkeypatch, django_capture_on_commit_callbacks
):
    # given the task queue runs tasks in-process
    monkeypatch.setattr(Conf, "SYNC", True)

    # when the post commits
    with django_capture_on_commit_callbacks(execute=True):
        post_postmark(client, payload("postmark_delivery", delivery))

    # then the enqueued task has applied the event
    delivery.refresh_from_db()
    assert delivery.state == "delivered"
    assert comm_state(communication) == "delivered"


def test_postmark_hard_bounce_bounces_delivery_invalidates_contact_and_suppresses(
    client, delivery, communication, customer, failures
):
    post_postmark(client, payload("postmark_bounce_hard", delivery))

    process_all()

    delivery.refresh_from_db()
    assert delivery.state == "bounced"
    assert "unable to deliver" in delivery.last_error
    contact = ContactPoint.objects.get(customer=customer)
    assert contact.valid is False
    assert "Hard bounce" in contact.invalid_reason
    suppression = Suppression.objects.get()
    assert (suppression.channel, suppression.reason) == ("email", "hard_bounce")
    assert suppression.address == "Jane.Doe@example.com"
    assert failures == [(delivery.pk, delivery.last_error)]
    # The customer has no other channel: the fallback chain ends the communication.
    assert comm_state(communication) == "undeliverable"


def test_mailgun_permanent_failure_is_a_hard_bounce(client, delivery, customer, failures):
    post_mailgun(client, payload("mailgun_failed_permanent", delivery))

    process_all()

    event = DeliveryEvent.objects.get()
    assert (event.event_type, event.hard) == ("bounced", True)
    delivery.refresh_from_db()
    assert delivery.state == "bounced"
    assert "5.1.1" in delivery.last_error
    assert ContactPoint.objects.get(customer=customer).valid is False
    assert Suppression.objects.get().reason == "hard_bounce"
    assert len(failures) == 1


@pytest.mark.parametrize(
    ("name", "event_type"),
    [("postmark_bounce_soft", "bounced"), ("mailgun_failed_temporary", "deferred")],
)
def test_soft_bounce_is_recorded_and_changes_nothing(
    client, delivery, customer, failures, name, event_type
):
    body = payload(name, delivery)
    if name.startswith("mailgun"):
        post_mailgun(client, body)
    else:
        post_postmark(client, body)

    process_all()

    event = DeliveryEvent.objects.get()
    assert (event.event_type, event.hard) == (event_type, False)
    assert event.processed_at is not None
    delivery.refresh_from_db()
    assert delivery.state == "sending"
    assert ContactPoint.objects.get(customer=customer).valid is True
    assert not Suppression.objects.exists()
    assert failures == []


def test_complaint_suppresses_the_address(client, delivery, customer):
    post_postmark(client, payload("postmark_spam_complaint", delivery))

    process_all()

    suppression = Suppression.objects.get()
    assert (suppression.address, suppression.reason) == ("Jane.Doe@example.com", "complaint")
    assert ContactPoint.objects.get(customer=customer).valid is True  # the address works


def test_complaint_on_an_already_suppressed_address_adds_none(client, delivery):
    Suppression.objects.create(channel="email", address=ADDRESS, reason="manual")
    post_postmark(client, payload("postmark_spam_complaint", delivery))

    process_all()

    assert Suppression.objects.get().reason == "manual"


def test_open_is_only_an_event(client, delivery, communication):
    post_postmark(client, payload("postmark_open", delivery))

    process_all()

    assert DeliveryEvent.objects.get().event_type == "opened"
    delivery.refresh_from_db()
    assert delivery.state == "sending"
    assert comm_state(communication) == "dispatching"


def test_late_delivered_after_hard_bounce_does_not_move_delivery_back(
    client, delivery, communication
):
    # given a hard bounce has been applied
    post_postmark(client, payload("postmark_bounce_hard", delivery))
    process_all()

    # when Postmark's delivery report for the same message arrives late
    post_postmark(client, payload("postmark_delivery", delivery))
    process_all()

    # then the delivery stays bounced and the communication is not called delivered
    assert DeliveryEvent.objects.count() == 2
    delivery.refresh_from_db()
    assert delivery.state == "bounced"
    assert delivery.delivered_at is None
    assert comm_state(communication) == "undeliverable"


def test_processing_an_event_twice_does_the_work_once(client, delivery, failures):
    # given a hard bounce applied once, after which an operator lifted the suppression
    post_postmark(client, payload("postmark_bounce_hard", delivery))
    event = DeliveryEvent.objects.get()
    delivery_event_process(event.pk)
    Suppression.objects.update(lifted_at=timezone.now())
    processed_at = DeliveryEvent.objects.get().processed_at

    # when the queue delivers the task again (at least once)
    delivery_event_process(event.pk)

    # then nothing is applied again: the address stays unsuppressed
    assert not Suppression.objects.filter(lifted_at__isnull=True).exists()
    assert Suppression.objects.count() == 1
    assert DeliveryEvent.objects.get().processed_at == processed_at
    assert failures == [(delivery.pk, Delivery.objects.get(pk=delivery.pk).last_error)]
    assert CommunicationStep.objects.filter(action="delivery.bounced").count() == 1


def test_late_sent_after_delivered_changes_nothing(delivery, communication):
    # given a delivered delivery
    sent_at = datetime(2024, 11, 5, 16, 33, tzinfo=UTC)
    Delivery.objects.filter(pk=delivery.pk).update(state="delivered", sent_at=sent_at)
    # when an ESP's "sent" report for it is processed
    event = DeliveryEvent.objects.create(
        delivery=delivery,
        provider="amazon_ses",
        event_id="send-1",
        event_type="sent",
        occurred_at=datetime(2024, 11, 5, 16, 40, tzinfo=UTC),
    )
    delivery_event_process(event.pk)

    # then the delivery is still delivered, with its first sent_at
    delivery.refresh_from_db()
    assert (delivery.state, delivery.sent_at) == ("delivered", sent_at)
    assert not AuditEvent.objects.filter(action__startswith="delivery.").exists()


def test_rejected_address_fails_the_delivery(client, delivery, customer, failures):
    body = payload("postmark_bounce_soft", delivery)
    body.update(Type="BadEmailAddress", TypeCode=100000, Name="Invalid email address")
    body["Description"] = "Invalid email address — The address is not a valid email address."

    post_postmark(client, body)
    process_all()

    assert DeliveryEvent.objects.get().event_type == "failed"
    delivery.refresh_from_db()
    assert delivery.state == "failed"
    assert failures == [(delivery.pk, delivery.last_error)]
    # Only a hard bounce proves the mailbox does not exist.
    assert ContactPoint.objects.get(customer=customer).valid is True
