"""Fallback chains: a delivery that fails for good moves on to the next channel."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import urlencode

import pytest
from django.utils import timezone
from twilio.request_validator import RequestValidator

from ccm.models import AuditEvent
from notifications import signals
from notifications.channels import EmailBackend, PermanentSendError
from notifications.channels.tracking import delivery_event_process
from notifications.customers import services as customer_services
from notifications.models import ContactPoint, DeliveryEvent
from notifications.pipeline import services
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish
from tests.notifications.twilio_stub import TwilioStub

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}
SENT_SMS: list[tuple[str, str]] = []


class RecordingSms:
    """Stands in for an SMS provider: records what it was asked to send."""

    def send(self, delivery) -> str:
        SENT_SMS.append((delivery.address, delivery.communication.rendered["sms"]["text"]))
        return f"SM{delivery.pk}"

    def lookup(self, delivery) -> str | None:
        return None


@pytest.fixture(autouse=True)
def _sms_enabled(settings):
    SENT_SMS.clear()
    settings.CCM_ENABLED_CHANNELS = ["email", "sms"]
    settings.CCM_CHANNEL_BACKENDS = {
        **settings.CCM_CHANNEL_BACKENDS,
        "sms": f"{__name__}.RecordingSms",
    }


@pytest.fixture
def undeliverable():
    seen: list[tuple[int, str]] = []

    def receiver(sender, communication, reason, **kwargs):
        seen.append((communication.pk, reason))

    signals.communication_undeliverable.connect(receiver, weak=False)
    yield seen
    signals.communication_undeliverable.disconnect(receiver)


def request(customer, by, template_code="letter"):
    communication, _ = services.communication_request(
        template_code=template_code, customer=customer, data=DATA, client="test", by=by
    )
    return communication


def hard_bounce(delivery) -> None:
    event = DeliveryEvent.objects.create(
        delivery=delivery,
        provider="postmark",
        event_id=f"bounce-{delivery.pk}",
        event_type="bounced",
        hard=True,
        recipient=delivery.address,
        description="The server was unable to deliver your message (ex: unknown user).",
        occurred_at=timezone.now(),
    )
    delivery_event_process(event.pk)


def test_permanent_email_failure_falls_back_to_sms(
    letter, customer, integrator, sync_tasks, monkeypatch
):
    def refuse(self, delivery):
        raise PermanentSendError("ESP rejected the message (422): Invalid 'To' address")

    monkeypatch.setattr(EmailBackend, "send", refuse)

    communication = sync_tasks(request, customer, integrator)

    communication.refresh_from_db()
    email, sms = communication.deliveries.order_by("id")
    assert (email.channel, email.state) == ("email", "failed")
    assert (sms.channel, sms.state, sms.address) == ("sms", "sent", "+447911123456")
    assert SENT_SMS == [("+447911123456", "Northwind: balance £12.50.")]
    assert communication.state == "sent"
    steps = [s for s in communication.decision_trace if s.get("decision") == "fallback"]
    assert steps == [
        {
            "decision": "fallback",
            "from": "email",
            "channel": "sms",
            "address": "+447911123456",
            "delivery": sms.pk,
        }
    ]
    assert AuditEvent.objects.filter(action="communication.fallback").count() == 1


def test_hard_bounce_after_sent_invalidates_email_and_sends_sms(
    letter, customer, integrator, sync_tasks
):
    # given the email went out
    communication = sync_tasks(request, customer, integrator)
    email = communication.deliveries.get()
    assert email.state == "sent"

    # when the ESP reports a hard bounce
    sync_tasks(hard_bounce, email)

    # then the address is invalid, the SMS is sent, and nobody is told it failed
    assert not ContactPoint.objects.get(kind="email").valid
    sms = communication.deliveries.get(channel="sms")
    assert sms.state == "sent"
    communication.refresh_from_db()
    assert communication.state == "sent"
    assert [s["decision"] for s in communication.decision_trace[-2:]] == [
        "delivery failed",
        "fallback",
    ]


def test_exhausted_chain_makes_the_communication_undeliverable_once(
    letter, customer, integrator, sync_tasks, undeliverable, monkeypatch
):
    def refuse(self, delivery):
        raise PermanentSendError("refused")

    monkeypatch.setattr(EmailBackend, "send", refuse)
    monkeypatch.setattr(RecordingSms, "send", refuse)

    communication = sync_tasks(request, customer, integrator)

    communication.refresh_from_db()
    assert communication.state == "undeliverable"
    assert [d.state for d in communication.deliveries.all()] == ["failed", "failed"]
    assert undeliverable == [(communication.pk, communication.failure_reason)]
    assert communication.decision_trace[-1] == {
        "decision": "chain exhausted",
        "reason": "no channel left to try",
    }


def test_template_chain_overrides_the_category_default(
    author, reviewer, customer, integrator, sync_tasks, undeliverable
):
    # given a template that declares no fallback at all
    publish(letter_bundle("nofallback", fallback=[]), author=author, reviewer=reviewer)
    communication = sync_tasks(request, customer, integrator, "nofallback")

    # when its email bounces
    sync_tasks(hard_bounce, communication.deliveries.get())

    # then no SMS is tried and the communication is undeliverable
    assert SENT_SMS == []
    communication.refresh_from_db()
    assert communication.state == "undeliverable"
    assert [pk for pk, _ in undeliverable] == [communication.pk]


def test_fallback_skips_a_channel_the_customer_opted_out_of(
    letter, customer, integrator, sync_tasks, undeliverable
):
    customer_services.preference_set(
        customer=customer, category="transactional", channel="sms", allowed=False
    )
    communication = sync_tasks(request, customer, integrator)

    sync_tasks(hard_bounce, communication.deliveries.get())

    communication.refresh_from_db()
    assert SENT_SMS == []
    assert communication.state == "undeliverable"
    skipped = [s for s in communication.decision_trace if s.get("decision") == "skipped"]
    assert skipped[0]["channel"] == "sms"
    assert "does not want transactional messages" in skipped[0]["reason"]


# --- end to end: a real Postmark bounce webhook, Twilio stub, a signed Twilio report ---------

WEBHOOK_SECRET = "user:pass"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-auth-token-for-tests"
PUBLIC = "https://ccm.example.org"


def test_email_hard_bounce_then_sms_delivered_end_to_end(
    letter, customer, integrator, sync_tasks, client, settings
):
    # given the real SMS backend talking to a loopback Twilio, and Postmark's webhook secret
    settings.ANYMAIL = {**settings.ANYMAIL, "WEBHOOK_SECRET": WEBHOOK_SECRET}
    settings.CCM_TRACKING_ESPS = ["postmark"]
    settings.CCM_CHANNEL_BACKENDS = {
        **settings.CCM_CHANNEL_BACKENDS,
        "sms": "notifications.channels.sms.SmsBackend",
    }
    settings.CCM_SMS_BACKEND = "notifications.channels.sms.TwilioSmsBackend"
    settings.CCM_PUBLIC_BASE_URL = PUBLIC
    settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = ACCOUNT_SID, AUTH_TOKEN
    settings.TWILIO_FROM_NUMBER = "+441134960000"
    settings.TWILIO_MESSAGING_SERVICE_SID = ""
    with TwilioStub(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as twilio:
        settings.TWILIO_API_BASE_URL = twilio.url
        communication = sync_tasks(request, customer, integrator)
        email = communication.deliveries.get()
        assert email.state == "sent"

        # when Postmark posts a hard bounce for the email
        bounce = json.loads(
            (Path(__file__).parent / "esp_payloads" / "postmark_bounce_hard.json").read_text()
        )
        bounce["Email"] = email.address
        bounce["Metadata"] = {
            "delivery_id": str(email.pk),
            "communication_id": str(communication.pk),
        }
        auth = "Basic " + base64.b64encode(WEBHOOK_SECRET.encode()).decode()
        response = sync_tasks(
            client.post,
            "/anymail/postmark/tracking/",
            data=json.dumps(bounce),
            content_type="application/json",
            HTTP_AUTHORIZATION=auth,
        )
        assert response.status_code == 200

        # then the SMS went to Twilio
        [created] = twilio.created
        assert created["form"]["To"] == "+447911123456"
        sms = communication.deliveries.get(channel="sms")
        assert (sms.state, sms.provider_message_id) == ("sent", created["sid"])

        # when Twilio reports it delivered (signed, as Twilio does)
        path = created["form"]["StatusCallback"].removeprefix(PUBLIC)
        form = {
            "AccountSid": ACCOUNT_SID,
            "MessageSid": created["sid"],
            "MessageStatus": "delivered",
            "To": "+447911123456",
        }
        signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + path, form)
        response = sync_tasks(
            client.post,
            path,
            data=urlencode(form),
            content_type="application/x-www-form-urlencoded",
            HTTP_X_TWILIO_SIGNATURE=signature,
        )
        assert response.status_code == 204

    # then the communication is delivered, by SMS, after the email bounced
    email.refresh_from_db()
    sms.refresh_from_db()
    communication.refresh_from_db()
    assert (email.state, sms.state) == ("bounced", "delivered")
    assert communication.state == "delivered"
    assert not ContactPoint.objects.get(kind="email").valid
    decisions = [s.get("decision") for s in communication.decision_trace]
    assert decisions[-2:] == ["delivery failed", "fallback"]
