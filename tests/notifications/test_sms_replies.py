"""Replies to our SMS through Twilio's signed inbound hook: STOP opts out and suppresses, START
undoes exactly that, anything else is recorded and signalled."""

from __future__ import annotations

import pytest

from ccm.models import AuditEvent
from notifications import signals
from notifications.channels import sms
from notifications.customers import services as customer_services
from notifications.models import Communication, ConsentRecord, Suppression
from notifications.pipeline import services
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish
from tests.notifications.test_sms import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    FROM_NUMBER,
    PHONE,
    PUBLIC,
    comm_state,
    signed_post,
)

INBOUND_PATH = "/hooks/sms/twilio/inbound"
DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}


def inbound_form(body: str, *, sid: str = "SM" + "9" * 32, phone: str = PHONE) -> dict:
    return {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "Body": body,
        "From": phone,
        "MessageSid": sid,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "SmsStatus": "received",
        "To": FROM_NUMBER,
    }


@pytest.fixture(autouse=True)
def _signed_hooks(settings):
    settings.CCM_ENABLED_CHANNELS = ["email", "sms"]
    settings.CCM_PUBLIC_BASE_URL = PUBLIC
    settings.TWILIO_AUTH_TOKEN = AUTH_TOKEN


@pytest.fixture
def promo(author, reviewer):
    """A marketing message that only exists as an SMS."""
    bundle = letter_bundle("promo", category="marketing", channels=["sms"])
    return publish(bundle, author=author, reviewer=reviewer)


@pytest.fixture
def opted_in(customer):
    customer_services.consent_record(
        customer=customer,
        channel="sms",
        category="marketing",
        granted=True,
        legal_basis="consent",
        source="form",
    )
    return customer


def send_promo(customer, integrator, sync_tasks) -> Communication:
    communication, _ = sync_tasks(
        services.communication_request,
        template_code="promo",
        customer=customer,
        data=DATA,
        client="t",
        by=integrator,
    )
    return Communication.objects.get(pk=communication.pk)


def sms_ledger(customer) -> set[tuple[str, bool, str]]:
    return set(
        ConsentRecord.objects.filter(customer=customer, channel="sms").values_list(
            "category", "granted", "source"
        )
    )


def test_stop_opts_out_and_suppresses_the_number(promo, opted_in, integrator, client, sync_tasks):
    # given the customer gets marketing SMS
    assert send_promo(opted_in, integrator, sync_tasks).state == "sent"
    # when they reply STOP
    response = signed_post(client, INBOUND_PATH, inbound_form("  Stop \n"))
    # then
    assert response.status_code == 200
    assert response["Content-Type"] == "text/xml"
    assert b"<Response />" in response.content
    assert {
        ("transactional", False, "sms_stop"),
        ("service", False, "sms_stop"),
        ("marketing", False, "sms_stop"),
    } <= sms_ledger(opted_in)
    assert not ConsentRecord.objects.filter(category="regulatory").exists()
    assert Suppression.objects.get(channel="sms", address=PHONE).reason == "unsubscribe"
    inbound = AuditEvent.objects.get(action="sms.inbound_received")
    assert inbound.after["body"] == "  Stop \n"
    assert inbound.after["keyword"] == "stop"
    # and the next marketing SMS is not selected
    blocked = send_promo(opted_in, integrator, sync_tasks)
    assert blocked.state == "undeliverable"
    assert {
        "channel": "sms",
        "eligible": False,
        "reason": "every address on this channel is suppressed",
    } in blocked.decision_trace
    assert len(sms.outbox) == 1


def test_stop_twice_changes_nothing_the_second_time(opted_in, client):
    signed_post(client, INBOUND_PATH, inbound_form("STOP", sid="SM" + "a" * 32))
    ledger = ConsentRecord.objects.count()

    signed_post(client, INBOUND_PATH, inbound_form("unsubscribe", sid="SM" + "b" * 32))
    signed_post(client, INBOUND_PATH, inbound_form("STOP", sid="SM" + "a" * 32))  # re-posted

    assert ConsentRecord.objects.count() == ledger
    assert Suppression.objects.filter(channel="sms").count() == 1
    assert AuditEvent.objects.filter(action="sms.inbound_received").count() == 2


def test_a_regulatory_notice_still_reaches_a_customer_who_said_stop(
    author, reviewer, customer, integrator, client, sync_tasks
):
    # given a regulatory notice by SMS or email, urgent so that SMS would come first
    bundle = letter_bundle("notice", category="regulatory", channels=["email", "sms"])
    publish(bundle, author=author, reviewer=reviewer)
    signed_post(client, INBOUND_PATH, inbound_form("STOP"))
    # when
    communication, _ = sync_tasks(
        services.communication_request,
        template_code="notice",
        customer=customer,
        data=DATA,
        client="t",
        by=integrator,
        urgency="high",
    )
    # then it went by email
    assert comm_state(communication.pk) == "sent"
    assert list(communication.deliveries.values_list("channel", flat=True)) == ["email"]


def test_start_opts_back_in_and_lifts_the_suppression(
    promo, opted_in, integrator, client, sync_tasks
):
    # given
    signed_post(client, INBOUND_PATH, inbound_form("STOP", sid="SM" + "a" * 32))
    # when
    response = signed_post(client, INBOUND_PATH, inbound_form("start", sid="SM" + "b" * 32))
    # then
    assert response.status_code == 200
    assert {
        ("transactional", True, "sms_start"),
        ("service", True, "sms_start"),
        ("marketing", True, "sms_start"),
    } <= sms_ledger(opted_in)
    assert Suppression.objects.get(channel="sms", address=PHONE).lifted_at is not None
    assert send_promo(opted_in, integrator, sync_tasks).state == "sent"
    assert [m.to for m in sms.outbox] == [PHONE]


def test_start_is_not_a_marketing_opt_in(customer, client):
    # given a customer who never opted in to marketing
    signed_post(client, INBOUND_PATH, inbound_form("STOP", sid="SM" + "a" * 32))
    # when
    signed_post(client, INBOUND_PATH, inbound_form("UNSTOP", sid="SM" + "b" * 32))
    # then service messages are back, marketing is not
    assert ("service", True, "sms_start") in sms_ledger(customer)
    assert ("marketing", True, "sms_start") not in sms_ledger(customer)


def test_stop_from_a_number_no_customer_has_still_suppresses_it(db, client):
    signed_post(client, INBOUND_PATH, inbound_form("STOP", phone="+447700900123"))

    assert Suppression.objects.get(channel="sms", address="+447700900123").reason == "unsubscribe"
    inbound = AuditEvent.objects.get(action="sms.inbound_received")
    assert (inbound.subject_type, inbound.after["from"]) == ("", "+447700900123")


def test_a_free_text_reply_is_recorded_and_signalled(customer, client):
    received = []
    signals.sms_received.connect(receiver := lambda **kw: received.append(kw))

    signed_post(client, INBOUND_PATH, inbound_form("I paid this yesterday, thanks"))

    signals.sms_received.disconnect(receiver)
    assert [(r["phone"], r["body"], r["customers"]) for r in received] == [
        (PHONE, "I paid this yesterday, thanks", [customer])
    ]
    assert not ConsentRecord.objects.exists()
    assert not Suppression.objects.exists()
    inbound = AuditEvent.objects.get(action="sms.inbound_received")
    assert inbound.subject_id == str(customer.pk)


def test_an_unsigned_reply_changes_nothing(customer, client):
    response = signed_post(client, INBOUND_PATH, inbound_form("STOP"), sign=False)

    assert response.status_code == 403
    assert not ConsentRecord.objects.exists()
    assert not Suppression.objects.exists()
    assert not AuditEvent.objects.filter(action="sms.inbound_received").exists()


def test_twilios_opt_out_type_covers_keywords_configured_there(customer, client):
    # given Advanced Opt-Out at Twilio knows a keyword we do not
    form = {**inbound_form("ARRET"), "OptOutType": "STOP"}
    # when
    signed_post(client, INBOUND_PATH, form)
    # then
    assert ("service", False, "sms_stop") in sms_ledger(customer)
    assert Suppression.objects.get(channel="sms", address=PHONE).reason == "unsubscribe"
