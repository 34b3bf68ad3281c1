"""The SMS channel: the real twilio SDK against a loopback Twilio (tests/notifications/
twilio_stub.py), the pipeline end to end and signed status callbacks (replies: test_sms_replies)."""

from __future__ import annotations

import base64
import io
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from documents.bundle import read_folder
from documents.composition import sms_segments
from documents.demo import LIBRARY
from documents.models import Template
from notifications import signals
from notifications.channels import sms
from notifications.models import (
    Communication,
    ContactPoint,
    Customer,
    Delivery,
    DeliveryEvent,
    Suppression,
)
from notifications.pipeline import services
from tests.ccm.test_settings import GOOD_KEY, _manage
from tests.notifications.conftest import publish
from tests.notifications.twilio_stub import TwilioStub

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-auth-token-for-tests"
FROM_NUMBER = "+441134960000"
PUBLIC = "https://ccm.example.org"
PHONE = "+447911123456"  # the conftest customer's mobile, in E.164
TEXT = "Northwind: your payment of GBP 12.50 is due on 1 May. Reply STOP to opt out."
STATUS_PATH = "/hooks/sms/twilio/status"


@pytest.fixture(autouse=True)
def _twilio_settings(settings):
    settings.CCM_ENABLED_CHANNELS = ["email", "sms"]
    settings.CCM_PUBLIC_BASE_URL = PUBLIC
    settings.TWILIO_ACCOUNT_SID = ACCOUNT_SID
    settings.TWILIO_AUTH_TOKEN = AUTH_TOKEN
    settings.TWILIO_FROM_NUMBER = FROM_NUMBER
    settings.TWILIO_MESSAGING_SERVICE_SID = ""
    settings.TWILIO_TIMEOUT_S = 2.0


@pytest.fixture
def twilio(settings):
    with TwilioStub(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN) as stub:
        settings.CCM_SMS_BACKEND = "notifications.channels.sms.TwilioSmsBackend"
        settings.TWILIO_API_BASE_URL = stub.url
        yield stub


@pytest.fixture
def delivery(customer):
    template = Template.objects.create(code="reminder", name="Reminder", category="service")
    communication = Communication.objects.create(
        customer=customer,
        template=template,
        data={},
        category="service",
        client="test",
        state="dispatching",
        rendered={"sms": {"text": TEXT, "segments": 1, "encoding": "GSM-7"}},
    )
    return Delivery.objects.create(
        communication=communication,
        channel="sms",
        address=PHONE,
        message_id=f"<ccm.{communication.pk}.0.sms@ccm.localhost>",
    )


@pytest.fixture
def sent_delivery(delivery):
    Delivery.objects.filter(pk=delivery.pk).update(
        state="sent", provider_message_id="SM" + "1" * 32
    )
    Communication.objects.filter(pk=delivery.communication_id).update(state="sent")
    delivery.refresh_from_db()
    return delivery


def comm_state(communication_id: int) -> str:
    return Communication.objects.get(pk=communication_id).state


def signed_post(client, path: str, form: dict, *, token: str = AUTH_TOKEN, sign: bool = True):
    signature = RequestValidator(token).compute_signature(PUBLIC + path, form)
    headers = {"HTTP_X_TWILIO_SIGNATURE": signature} if sign else {}
    return client.post(
        path, data=urlencode(form), content_type="application/x-www-form-urlencoded", **headers
    )


def status_form(status: str, *, sid: str = "SM" + "1" * 32, error_code: str = "") -> dict:
    form = {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "From": FROM_NUMBER,
        "MessageSid": sid,
        "MessageStatus": status,
        "SmsSid": sid,
        "SmsStatus": status,
        "To": PHONE,
    }
    if error_code:
        form["ErrorCode"] = error_code
    return form


# --- the Twilio backend ----------------------------------------------------------------------


def test_twilio_gets_the_text_number_callback_and_our_credentials(twilio, delivery):
    # when
    outcome = services.delivery_dispatch_run(delivery.pk)
    # then
    assert outcome.state == "sent"
    [created] = twilio.created
    assert twilio.posts()[0]["path"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
    assert created["form"] == {
        "To": PHONE,
        "Body": TEXT,
        "From": FROM_NUMBER,
        "StatusCallback": f"{PUBLIC}{STATUS_PATH}?delivery={delivery.pk}",
    }
    credentials = base64.b64decode(created["authorization"].removeprefix("Basic ")).decode()
    assert credentials == f"{ACCOUNT_SID}:{AUTH_TOKEN}"
    delivery.refresh_from_db()
    assert delivery.state == "sent"
    assert delivery.provider_message_id == created["sid"]
    assert delivery.meta == {"segments": 1, "encoding": "GSM-7", "sms_backend": "twilio"}
    assert comm_state(delivery.communication_id) == "sent"


def test_a_messaging_service_sends_instead_of_a_number(twilio, delivery, settings):
    settings.TWILIO_MESSAGING_SERVICE_SID = "MG" + "a" * 32

    services.delivery_dispatch_run(delivery.pk)

    form = twilio.created[0]["form"]
    assert form["MessagingServiceSid"] == "MG" + "a" * 32
    assert "From" not in form


def test_an_invalid_number_fails_for_good_with_twilios_reason(
    twilio, delivery, django_capture_on_commit_callbacks
):
    # given
    twilio.script(("error", 400, 21211, f"Invalid 'To' Phone Number: {PHONE}"))
    failed = []

    def receiver(delivery, reason, **kwargs):
        failed.append(reason)

    signals.delivery_failed.connect(receiver)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        outcome = services.delivery_dispatch_run(delivery.pk)
    signals.delivery_failed.disconnect(receiver)
    # then
    delivery.refresh_from_db()
    assert outcome.state == delivery.state == "failed"
    assert delivery.last_error == (
        f"Twilio refused the message (21211): Invalid 'To' Phone Number: {PHONE}"
    )
    assert failed == [delivery.last_error]
    assert len(twilio.posts()) == 1  # not retried


def test_rate_limits_and_server_errors_are_retried(twilio, delivery):
    twilio.script(
        ("error", 429, 20429, "Too Many Requests"),
        ("error", 503, 20503, "Service Unavailable"),
    )

    outcome = services.delivery_dispatch_run(delivery.pk)

    assert outcome.state == "sent"
    assert len(twilio.posts()) == 3
    assert len(twilio.created) == 1


def test_a_transient_error_left_after_the_inline_retries_waits_for_later(
    twilio, delivery, settings
):
    settings.CCM_DISPATCH_INLINE_RETRIES = 0
    twilio.script(("error", 500, 20500, "Internal Server Error"))

    outcome = services.delivery_dispatch_run(delivery.pk)

    delivery.refresh_from_db()
    assert outcome.state == delivery.state == "pending"
    assert delivery.next_attempt_at is not None
    assert "Twilio error 500 (20500): Internal Server Error" in delivery.last_error


def test_refused_credentials_wait_for_a_fix_instead_of_failing(twilio, delivery, settings):
    settings.CCM_DISPATCH_INLINE_RETRIES = 0
    settings.TWILIO_AUTH_TOKEN = "rotated-token"

    outcome = services.delivery_dispatch_run(delivery.pk)

    assert outcome.state == "pending"
    assert "Twilio refused our credentials (20003)" in outcome.detail
    assert twilio.created == []


def test_a_timeout_is_looked_up_at_twilio_and_not_sent_twice(twilio, delivery, settings):
    # given Twilio accepts the message but answers after we stopped waiting
    settings.TWILIO_TIMEOUT_S = 0.5
    twilio.script(("timeout", 1.5))
    # when
    outcome = services.delivery_dispatch_run(delivery.pk)
    # then the lookup found it: one message at Twilio, its sid recorded
    delivery.refresh_from_db()
    assert outcome.state == delivery.state == "sent"
    [created] = twilio.created
    assert delivery.provider_message_id == created["sid"]
    assert len(twilio.posts()) == 1
    assert any(r["method"] == "GET" for r in twilio.requests)


def test_a_lookup_never_takes_the_message_of_another_delivery(twilio, delivery, customer):
    # given the same text already went to the same number for another communication
    other = Delivery.objects.create(
        communication=delivery.communication,
        channel="sms",
        address=PHONE,
        message_id="<other@ccm.localhost>",
    )
    services.delivery_dispatch_run(other.pk)
    other.refresh_from_db()
    # when
    found = sms.SmsBackend().lookup(delivery)
    # then
    assert other.provider_message_id == twilio.created[0]["sid"]
    assert found is None


def test_a_number_that_said_stop_at_twilio_is_suppressed(twilio, delivery):
    twilio.script(("error", 400, 21610, "Attempt to send to unsubscribed recipient"))

    outcome = services.delivery_dispatch_run(delivery.pk)

    assert outcome.state == "failed"
    suppression = Suppression.objects.get(channel="sms", address=PHONE)
    assert suppression.reason == "unsubscribe"
    assert "21610" in suppression.detail


def test_a_text_too_long_is_refused_at_send(delivery):
    # given a text that grew past the limit after composing (6 GSM-7 segments is the maximum)
    Communication.objects.filter(pk=delivery.communication_id).update(
        rendered={"sms": {"text": "x" * (153 * 6 + 1)}}
    )
    # when
    outcome = services.delivery_dispatch_run(delivery.pk)
    # then
    delivery.refresh_from_db()
    assert outcome.state == "failed"
    assert delivery.last_error == (
        "the SMS needs 7 GSM-7 segments, more than the 6 allowed: shorten the template's sms.txt"
    )
    assert delivery.meta["segments"] == 7
    assert sms.outbox == []


def test_the_console_backend_prints_the_message():
    stream = io.StringIO()

    sid = sms.ConsoleSmsBackend(stream).send(sms.SmsMessage(to=PHONE, body=TEXT))

    assert sid.startswith("console-")
    assert f"SMS to {PHONE}" in stream.getvalue()
    assert TEXT in stream.getvalue()


def test_production_refuses_twilio_without_credentials():
    result = _manage(
        "check",
        DEBUG="false",
        SECRET_KEY=GOOD_KEY,
        ALLOWED_HOSTS="ccm.example.org",
        ANYMAIL_WEBHOOK_SECRET="esp:long-random-webhook-secret",
        CCM_SMS_BACKEND="notifications.channels.sms.TwilioSmsBackend",
        TWILIO_ACCOUNT_SID="",
        TWILIO_AUTH_TOKEN="",
        TWILIO_FROM_NUMBER="+441134960000",
    )
    assert result.returncode != 0
    assert "needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN when DEBUG is off" in result.stderr


# --- the pipeline, end to end ----------------------------------------------------------------


def test_a_payment_reminder_goes_out_by_sms_and_is_delivered(
    twilio, author, reviewer, customer, integrator, sync_tasks, client
):
    # given the library's payment reminder (print, email, SMS), urgent so that SMS comes first
    version = publish(read_folder(LIBRARY / "payment_reminder"), author=author, reviewer=reviewer)
    # for the customer's own account (its account number is an identity field)
    Customer.objects.filter(pk=customer.pk).update(external_ref="NW-3310-0457")
    customer.refresh_from_db()
    # when
    communication, _ = sync_tasks(
        services.communication_request,
        template_code="payment_reminder",
        customer=customer,
        data=version.content["samples"]["default"],
        client="t",
        by=integrator,
        urgency="high",
    )
    # then Twilio got the composed text, and the delivery knows what it cost
    communication = Communication.objects.get(pk=communication.pk)
    assert communication.state == "sent"
    delivery = communication.deliveries.get()
    text = communication.rendered["sms"]["text"]
    assert text.startswith("Northwind reminder: £288.59 on account NW-3310-0457")
    [created] = twilio.created
    assert (created["form"]["To"], created["form"]["Body"]) == (PHONE, text)
    encoding, segments = sms_segments(text)
    assert (delivery.meta["segments"], delivery.meta["encoding"]) == (segments, encoding)
    assert (delivery.state, delivery.provider_message_id) == ("sent", created["sid"])
    # when Twilio reports it delivered
    for status in ("sent", "delivered"):
        path = f"{STATUS_PATH}?delivery={delivery.pk}"
        response = sync_tasks(signed_post, client, path, status_form(status, sid=created["sid"]))
        assert response.status_code == 204
    # then
    delivery.refresh_from_db()
    assert delivery.state == "delivered"
    assert delivery.delivered_at is not None
    assert comm_state(communication.pk) == "delivered"


# --- status callbacks ------------------------------------------------------------------------


def test_a_signed_delivered_report_delivers(sent_delivery, client, sync_tasks):
    response = sync_tasks(signed_post, client, STATUS_PATH, status_form("delivered"))

    assert response.status_code == 204
    event = DeliveryEvent.objects.get()
    assert (event.provider, event.event_id) == ("twilio", f"{'SM' + '1' * 32}:delivered")
    assert event.delivery == sent_delivery
    assert event.raw["MessageStatus"] == "delivered"
    sent_delivery.refresh_from_db()
    assert sent_delivery.state == "delivered"
    assert comm_state(sent_delivery.communication_id) == "delivered"


@pytest.mark.parametrize(
    ("token", "sign"), [("not-the-auth-token", True), (AUTH_TOKEN, False)], ids=["bad", "missing"]
)
def test_an_unsigned_or_forged_report_is_refused(sent_delivery, client, token, sign):
    response = signed_post(client, STATUS_PATH, status_form("delivered"), token=token, sign=sign)

    assert response.status_code == 403
    assert not DeliveryEvent.objects.exists()
    sent_delivery.refresh_from_db()
    assert sent_delivery.state == "sent"


def test_a_report_signed_for_another_url_is_refused(sent_delivery, client):
    # Twilio signs the URL it called: a signature for another delivery's URL does not carry over
    form = status_form("delivered")
    signature = RequestValidator(AUTH_TOKEN).compute_signature(f"{PUBLIC}{STATUS_PATH}", form)
    response = client.post(
        f"{STATUS_PATH}?delivery={sent_delivery.pk}",
        data=urlencode(form),
        content_type="application/x-www-form-urlencoded",
        HTTP_X_TWILIO_SIGNATURE=signature,
    )
    assert response.status_code == 403


def test_the_same_report_twice_is_one_event(sent_delivery, client, sync_tasks):
    for _ in range(2):
        response = sync_tasks(signed_post, client, STATUS_PATH, status_form("delivered"))
        assert response.status_code == 204

    assert DeliveryEvent.objects.count() == 1


def test_a_report_that_races_ahead_of_the_sid_finds_its_delivery(delivery, client, sync_tasks):
    # given the dispatcher has not recorded the sid yet
    Delivery.objects.filter(pk=delivery.pk).update(state="sending")
    # when
    path = f"{STATUS_PATH}?delivery={delivery.pk}"
    sync_tasks(signed_post, client, path, status_form("delivered", sid="SM" + "7" * 32))
    # then
    delivery.refresh_from_db()
    assert DeliveryEvent.objects.get().delivery == delivery
    assert delivery.state == "delivered"


def test_an_unknown_number_is_a_hard_bounce(sent_delivery, customer, client, sync_tasks):
    # when
    form = status_form("undelivered", error_code="30005")
    sync_tasks(signed_post, client, STATUS_PATH, form)
    # then the delivery bounced, the number is marked invalid and suppressed for SMS
    sent_delivery.refresh_from_db()
    assert sent_delivery.state == "bounced"
    assert "30005: unknown destination handset" in sent_delivery.last_error
    phone = ContactPoint.objects.get(customer=customer, kind="phone")
    assert phone.valid is False
    assert "30005" in phone.invalid_reason
    suppression = Suppression.objects.get(channel="sms", address=PHONE)
    assert suppression.reason == "hard_bounce"


def test_a_handset_out_of_reach_fails_without_blaming_the_number(
    sent_delivery, customer, client, sync_tasks
):
    sync_tasks(signed_post, client, STATUS_PATH, status_form("undelivered", error_code="30003"))

    sent_delivery.refresh_from_db()
    assert sent_delivery.state == "failed"
    assert "30003: unreachable destination handset" in sent_delivery.last_error
    assert ContactPoint.objects.get(customer=customer, kind="phone").valid is True
    assert not Suppression.objects.exists()
