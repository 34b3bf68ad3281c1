"""The bulk path's Postmark JSON is exactly what Anymail's Postmark backend would post."""

from __future__ import annotations

import pytest
from django.core.mail import get_connection

from notifications.channels import EmailBackend
from notifications.channels.postmark_batch import PostmarkPayloads, direct_payloads_allowed
from notifications.models import Communication, Customer, Delivery
from notifications.pipeline import services
from tests.documents.factories import TemplateFactory

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}


@pytest.fixture
def postmark(settings):
    settings.ANYMAIL = {**settings.ANYMAIL, "POSTMARK_SERVER_TOKEN": "token"}
    settings.DEFAULT_FROM_EMAIL = 'Northwind "Billing" <billing@northwind.example>'
    return get_connection("anymail.backends.postmark.EmailBackend")


def anymail_json(connection, delivery: Delivery) -> dict:
    message = EmailBackend().message(delivery)
    return connection.build_message_payload(message, connection.send_defaults).data


def bare_delivery(name: str, address: str, category: str) -> Delivery:
    customer = Customer.objects.create(external_ref=f"C-{address}", name=name)
    communication = Communication.objects.create(
        customer=customer,
        template=TemplateFactory(code=f"t-{category}", category=category),
        data={},
        category=category,
        client="test",
        rendered={"email": {"subject": "Sujet: ça va", "html": "<p>Hi</p>", "text": "Hi"}},
    )
    return Delivery.objects.create(
        communication=communication,
        channel="email",
        address=address,
        message_id=f"<ccm.{communication.pk}.0.email@ccm.localhost>",
    )


@pytest.mark.parametrize(
    ("name", "address", "category"),
    [
        ("Ada Lovelace", "ada@example.org", "transactional"),
        ('Seán "Jack" O\'Brien, Jr.', "jack@example.ie", "marketing"),
        ("Zoë Ünal", "zoe@exämple.de", "service"),
        ("Zoë Ünal", "zoe@example.de", "service"),
        ("", "first.last+tag@mail.example.co.uk", "transactional"),
        ("Ann  Lee (home)", "ann@example.org", "service"),
    ],
)
def test_direct_json_equals_anymails(db, postmark, name, address, category):
    delivery = bare_delivery(name, address, category)

    assert PostmarkPayloads(postmark).payload(delivery) == anymail_json(postmark, delivery)


def test_direct_json_equals_anymails_with_the_pdf_attached(
    postmark, letter, customer, integrator, sync_tasks
):
    communication, _ = sync_tasks(
        services.communication_request,
        template_code="letter",
        customer=customer,
        data=DATA,
        client="t",
        by=integrator,
    )
    delivery = Communication.objects.get(pk=communication.pk).deliveries.get()

    direct = PostmarkPayloads(postmark).payload(delivery)

    assert direct == anymail_json(postmark, delivery)
    assert direct["Attachments"][0]["ContentType"] == "application/pdf"


def test_a_pre_send_receiver_keeps_the_anymail_path(postmark):
    from anymail.signals import pre_send

    def receiver(sender, message, esp_name, **kwargs):
        pass

    assert direct_payloads_allowed(postmark)
    pre_send.connect(receiver)
    try:
        assert not direct_payloads_allowed(postmark)
    finally:
        pre_send.disconnect(receiver)
