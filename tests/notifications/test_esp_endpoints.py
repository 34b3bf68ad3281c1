"""Only the tracking endpoints of the ESPs CCM sends through exist (the project's own urls)."""

from __future__ import annotations

import base64
import json

import pytest

from ccm import esp
from notifications.models import ContactPoint, Customer, DeliveryEvent, Suppression

pytestmark = [pytest.mark.django_db, pytest.mark.urls("ccm.urls")]

SECRET = "esp:webhook-secret"
AUTH = "Basic " + base64.b64encode(SECRET.encode()).decode()


@pytest.fixture
def sending_through(settings):
    def configure(backend: str, *listed: str) -> None:
        settings.EMAIL_BACKEND = backend
        settings.ANYMAIL = {
            **settings.ANYMAIL,
            "WEBHOOK_SECRET": SECRET,
            "MAILGUN_WEBHOOK_SIGNING_KEY": "key-0123456789abcdef",
        }
        settings.CCM_TRACKING_ESPS = esp.tracking_esps(email_backend=backend, explicit=listed)

    return configure


def test_a_forged_bounce_to_an_esp_we_do_not_use_is_404_and_suppresses_nothing(
    client, sending_through
):
    # given CCM sends through Postmark, and a customer's address
    sending_through("anymail.backends.postmark.EmailBackend")
    customer = Customer.objects.create(external_ref="C-1", name="Jane")
    ContactPoint.objects.create(customer=customer, kind="email", value="jane@example.com")
    # when someone who learnt the basic-auth secret posts a SendGrid hard bounce
    forged = [
        {
            "email": "jane@example.com",
            "event": "bounce",
            "type": "bounce",
            "reason": "550 5.1.1 no such user",
            "sg_event_id": "forged-1",
            "sg_message_id": "x.filter0001",
            "timestamp": 1716573728,
        }
    ]
    response = client.post(
        "/anymail/sendgrid/tracking/",
        data=json.dumps(forged),
        content_type="application/json",
        HTTP_AUTHORIZATION=AUTH,
    )
    # then the endpoint does not exist and nothing changed
    assert response.status_code == 404
    assert not DeliveryEvent.objects.exists()
    assert not Suppression.objects.exists()
    assert ContactPoint.objects.get().valid
    # while Postmark's own endpoint is there (it refuses a caller without the secret)
    assert (
        client.post(
            "/anymail/postmark/tracking/", data="{}", content_type="application/json"
        ).status_code
        == 400
    )


def test_only_the_listed_esps_are_mounted(client, sending_through):
    sending_through("django.core.mail.backends.console.EmailBackend", "mailgun", "postmark")
    assert (
        client.post(
            "/anymail/mailgun/tracking/", data="{}", content_type="application/json"
        ).status_code
        != 404
    )
    assert (
        client.post(
            "/anymail/postmark/tracking/", data="{}", content_type="application/json"
        ).status_code
        != 404
    )
    for other in ("sendgrid", "sparkpost", "brevo", "mailjet", "amazon_ses", "resend"):
        assert (
            client.post(
                f"/anymail/{other}/tracking/", data="{}", content_type="application/json"
            ).status_code
            == 404
        )
    # and no inbound-mail endpoint at all
    assert (
        client.post(
            "/anymail/postmark/inbound/", data="{}", content_type="application/json"
        ).status_code
        == 404
    )
