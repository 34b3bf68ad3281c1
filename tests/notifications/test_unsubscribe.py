from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from django.core import mail
from django.utils import timezone

from notifications.channels.tracking import delivery_event_process
from notifications.channels.unsubscribe import unsubscribe_url
from notifications.customers import services as customer_services
from notifications.models import ConsentRecord, DeliveryEvent, Suppression
from notifications.pipeline import services
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}


@pytest.fixture
def offer(author, reviewer):
    bundle = letter_bundle("offer", category="marketing", channels=["email"])
    return publish(bundle, author=author, reviewer=reviewer)


@pytest.fixture
def subscribed(customer):
    customer_services.consent_record(
        customer=customer,
        channel="email",
        category="marketing",
        granted=True,
        legal_basis="consent",
        source="form",
    )
    return customer


def send(template_code, customer, by, sync_tasks):
    communication, _ = sync_tasks(
        services.communication_request,
        template_code=template_code,
        customer=customer,
        data=DATA,
        client="test",
        by=by,
    )
    communication.refresh_from_db()
    return communication


def path_of(url: str) -> str:
    return urlsplit(url).path


def test_marketing_email_carries_one_click_unsubscribe(
    offer, subscribed, integrator, sync_tasks, settings
):
    settings.CCM_PUBLIC_BASE_URL = "https://ccm.example.com"
    communication = send("offer", subscribed, integrator, sync_tasks)

    headers = mail.outbox[0].extra_headers
    delivery = communication.deliveries.get()
    assert headers["List-Unsubscribe"] == f"<{unsubscribe_url(delivery)}>"
    assert headers["List-Unsubscribe"].startswith("<https://ccm.example.com/u/")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_transactional_and_regulatory_mail_carry_no_unsubscribe(
    letter, customer, integrator, sync_tasks, author, reviewer
):
    publish(
        letter_bundle("notice", category="regulatory", channels=["email"]),
        author=author,
        reviewer=reviewer,
    )
    send("letter", customer, integrator, sync_tasks)
    send("notice", customer, integrator, sync_tasks)

    assert len(mail.outbox) == 2
    for message in mail.outbox:
        assert "List-Unsubscribe" not in message.extra_headers
        assert "List-Unsubscribe-Post" not in message.extra_headers


def test_one_click_post_opts_out_once_without_cookies(
    offer, subscribed, integrator, sync_tasks, client
):
    # given a marketing email was sent
    communication = send("offer", subscribed, integrator, sync_tasks)
    url = path_of(unsubscribe_url(communication.deliveries.get()))

    # when the mailbox provider posts the one-click body twice, with no session or CSRF token
    client.cookies.clear()
    first = client.post(url, {"List-Unsubscribe": "One-Click"})
    second = client.post(url, {"List-Unsubscribe": "One-Click"})

    # then one opt-out is in the ledger and the next marketing email is not sent
    assert first.status_code == second.status_code == 200
    assert first["Referrer-Policy"] == "no-referrer"
    opt_outs = ConsentRecord.objects.filter(customer=subscribed, granted=False)
    assert list(opt_outs.values_list("channel", "category", "source")) == [
        ("email", "marketing", "unsubscribe")
    ]
    assert opt_outs.get().evidence["one_click"] is True
    assert not Suppression.objects.exists()  # service and regulatory mail still reach them
    again = send("offer", subscribed, integrator, sync_tasks)
    assert again.state == "undeliverable"
    assert len(mail.outbox) == 1


def test_get_only_asks_for_confirmation(offer, subscribed, integrator, sync_tasks, client):
    communication = send("offer", subscribed, integrator, sync_tasks)
    url = path_of(unsubscribe_url(communication.deliveries.get()))

    response = client.get(url)

    assert response.status_code == 200
    assert b"Unsubscribe</button>" in response.content
    assert not ConsentRecord.objects.filter(granted=False).exists()


def test_tampered_token_changes_nothing(offer, subscribed, integrator, sync_tasks, client):
    communication = send("offer", subscribed, integrator, sync_tasks)
    url = path_of(unsubscribe_url(communication.deliveries.get()))
    pk = url.rstrip("/").rsplit("/", 1)[1].split(":", 1)[0]
    forged = url.replace(f"{pk}:", f"{int(pk) + 1}:")

    response = client.post(forged, {"List-Unsubscribe": "One-Click"})

    assert response.status_code == 400
    assert b"does not work" in response.content
    assert not ConsentRecord.objects.filter(granted=False).exists()


def test_esp_reported_unsubscribe_is_a_marketing_opt_out_not_a_suppression(
    offer, subscribed, integrator, sync_tasks
):
    communication = send("offer", subscribed, integrator, sync_tasks)
    delivery = communication.deliveries.get()
    event = DeliveryEvent.objects.create(
        delivery=delivery,
        provider="postmark",
        event_id="unsub-1",
        event_type="unsubscribed",
        recipient=delivery.address,
        occurred_at=timezone.now(),
    )

    delivery_event_process(event.pk)

    assert ConsentRecord.objects.filter(
        customer=subscribed, channel="email", category="marketing", granted=False
    ).exists()
    assert not Suppression.objects.exists()
