"""Urgent notices go out on their fast channel first; the PDF and the durable copy (email with
the PDF, or print) are composed after, through the same selection."""

from __future__ import annotations

import pytest
from django.core import mail

from documents.bundle import read_folder
from documents.demo import LIBRARY
from documents.models import Document
from notifications.channels import sms
from notifications.models import Communication
from notifications.pipeline import fallback, intake, selection
from tests.notifications.conftest import publish


@pytest.fixture
def advisory(author, reviewer, settings):
    settings.CCM_ENABLED_CHANNELS = ["email", "sms", "push", "print"]
    return publish(
        read_folder(LIBRARY / "water_quality_advisory"), author=author, reviewer=reviewer
    )


def request(advisory, customer, sync_tasks, *, urgency: str) -> Communication:
    [result] = sync_tasks(
        intake.communications_intake,
        items=[
            {
                "template": "water_quality_advisory",
                "customer": customer.pk,
                "data": {
                    **advisory.content["samples"]["default"],
                    "customer": {"name": customer.name, "address": customer.postal_address},
                },
                "urgency": urgency,
                "idempotency_key": f"wq-{urgency}",
            }
        ],
        client="t",
        by=None,
    )
    assert result.accepted, result.errors
    return Communication.objects.get(pk=result.communication_id)


def test_an_urgent_regulatory_notice_sends_its_sms_before_its_pdf_exists(
    advisory, customer, sync_tasks, monkeypatch
):
    # given the SMS provider notes whether the notice's PDF existed when it was handed the SMS
    documents_at_send: list[int] = []
    original = sms.LocmemSmsBackend.send

    def noting(self, message):
        documents_at_send.append(Document.objects.count())
        return original(self, message)

    monkeypatch.setattr(sms.LocmemSmsBackend, "send", noting)
    # when an urgent water-quality advisory (regulatory: SMS now, email with the PDF too)
    communication = request(advisory, customer, sync_tasks, urgency="high")
    # then the SMS went before any PDF was rendered
    assert documents_at_send == [0]
    # and the durable copy followed: the PDF archived, the email carrying it
    communication.refresh_from_db()
    assert communication.document is not None
    channels = list(communication.deliveries.order_by("pk").values_list("channel", "state"))
    assert channels == [("sms", "sent"), ("email", "sent")]
    [email] = mail.outbox
    assert any(name.endswith(".pdf") for name, _, _ in email.attachments)
    decisions = [e.get("decision") for e in communication.decision_trace]
    assert "deferred, sent" in decisions
    assert "durable composed" in decisions
    assert selection.DURABLE_LATER not in decisions
    # and running the durable step again sends nothing twice
    assert fallback.durable_copies_send([communication.pk]) == 0
    assert communication.deliveries.count() == 2


def test_a_routine_notice_renders_its_pdf_before_anything_is_sent(advisory, customer, sync_tasks):
    # when the same advisory is not urgent: email (with the PDF) is the choice, composed at once
    communication = request(advisory, customer, sync_tasks, urgency="normal")
    communication.refresh_from_db()
    assert communication.document is not None
    assert list(communication.deliveries.values_list("channel", flat=True)) == ["email"]
    assert not selection.durable_pending(communication.decision_trace)


def test_durable_later_keeps_the_choice_and_only_defers_the_durable_targets():
    facts = selection.Facts(
        category="regulatory",
        urgency="high",
        renditions=["sms", "email", "print"],
        emails=["a@example.org"],
        phones=["+447700900001"],
    )
    chosen = selection.select_channels(facts)
    assert chosen.channels == ["sms", "email"]
    later = selection.durable_later(chosen, urgency="high")
    assert later is not None
    assert later.channels == ["sms"]
    assert selection.durable_pending(later.trace)
    assert [e["channel"] for e in later.trace if e.get("decision") == "deferred"] == ["email"]
    # nothing to defer without urgency, or without a fast channel to go first
    assert selection.durable_later(chosen, urgency="normal") is None
    email_only = selection.select_channels(
        selection.Facts(
            category="regulatory", urgency="high", renditions=["email"], emails=["a@x.org"]
        )
    )
    assert selection.durable_later(email_only, urgency="high") is None
