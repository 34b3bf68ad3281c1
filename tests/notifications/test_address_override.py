"""A communication sent to an address the customer gave for this one message (a reprint to a
new address), instead of the addresses on file; selection still checks suppression."""

from __future__ import annotations

import pytest

from notifications.errors import IntakeError
from notifications.models import Suppression
from notifications.pipeline import services, tasks

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}


def send(customer, by, **kwargs):
    communication, _ = services.communication_request(
        template_code="letter", customer=customer, data=DATA, client="t", by=by, **kwargs
    )
    return communication


def test_the_override_address_receives_it_and_the_one_on_file_does_not(
    letter, customer, integrator, sync_tasks
):
    communication = send(
        customer, integrator, channel_override="email", address_override="Ada@Elsewhere.Example"
    )
    sync_tasks(tasks.communication_compose, communication.pk)
    communication.refresh_from_db()
    assert communication.address_override == "Ada@elsewhere.example"
    assert [(d.channel, d.address) for d in communication.deliveries.all()] == [
        ("email", "Ada@elsewhere.example")
    ]


def test_a_suppressed_override_address_is_not_used(letter, customer, integrator, sync_tasks):
    Suppression.objects.create(channel="email", address="gone@example.org", reason="hard_bounce")
    communication = send(
        customer, integrator, channel_override="email", address_override="gone@example.org"
    )
    sync_tasks(tasks.communication_compose, communication.pk)
    communication.refresh_from_db()
    assert "gone@example.org" not in [d.address for d in communication.deliveries.all()]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"address_override": "a@b.example"}, "channel"),
        ({"channel_override": "email", "address_override": "not an address"}, "address"),
        ({"channel_override": "print", "address_override": "one line only"}, "address"),
    ],
)
def test_a_bad_override_names_the_field(letter, customer, integrator, kwargs, field):
    with pytest.raises(IntakeError) as refused:
        send(customer, integrator, **kwargs)
    assert refused.value.field == field
