"""Sending a campaign: the hand-off chain, and a regulatory notice over every kind of channel."""

from __future__ import annotations

from collections import Counter

import pytest
from django.core import mail
from django.db import connection

from ccm import approvals
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.campaigns import selectors
from notifications.campaigns import services as campaigns
from notifications.campaigns.models import CampaignRecipient
from notifications.channels import sms
from notifications.customers import services as customer_services
from notifications.models import Communication, Delivery, PrintItem
from tests.campaigns.conftest import sent_after_a_lost_commit
from tests.notifications.conftest import publish

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs PostgreSQL (set DATABASE_URL)"
)


def test_a_send_task_hands_twice_and_queues_its_successor_between(
    approved, ops, settings, monkeypatch, django_capture_on_commit_callbacks
):
    # given hand-offs of two recipients, each composed by two chunk tasks of one
    settings.CCM_BULK_CHUNK = 1
    settings.CCM_CAMPAIGN_HANDOFF_CHUNKS = 2
    campaigns.campaign_schedule(campaign=approved, by=ops)  # its task is not run here
    queued: list[str] = []
    monkeypatch.setattr("ccm.tasks.async_task", lambda task, *a, **k: queued.append(task))
    # when the send task runs
    with django_capture_on_commit_callbacks(execute=True):
        campaigns.campaign_send(approved.pk)
    # then it handed two hand-offs, not the whole audience, and the next send task waits in
    # the queue behind the first hand-off's composition, ahead of the second's: the worker is
    # free again and the queue never runs dry
    compose = "notifications.pipeline.compose.compose_chunk"
    assert queued == [compose, compose, campaigns.SEND_TASK, compose, compose]
    assert CampaignRecipient.objects.filter(campaign=approved, state="handed").count() == 4
    approved.refresh_from_db()
    assert approved.state == "sending"  # the successor finds nobody left and completes it


@pytest.fixture
def rate_change_notice(author, reviewer):
    """The library's regulatory notice: a letter, an email and an SMS."""
    return publish(read_folder(LIBRARY / "rate_change_notice"), author=author, reviewer=reviewer)


ADDRESS = ["1 Mill Lane", "Leeds LS1 1AA"]
# Customers (their references written as the template's account numbers are) by what reaches
# them: email (durable); a phone and a postal address (SMS is not durable: a letter follows);
# a postal address alone; a phone alone (no durable medium at all).
KINDS = {
    "NW-0000-0001": {"emails": ["r-email@example.org"], "postal_address": ADDRESS},
    "NW-0000-0002": {"phones": ["+447911123401"], "postal_address": ADDRESS},
    "NW-0000-0003": {"postal_address": ADDRESS},
    "NW-0000-0004": {"phones": ["+447911123402"]},
}


@pytest.fixture
def mixed_campaign(rate_change_notice, admin_user, author, reviewer2):
    sample = read_folder(LIBRARY / "rate_change_notice").samples
    data = dict(sample[next(iter(sample))])
    data.pop("customer", None)
    for ref, contacts in KINDS.items():
        customer, _ = customer_services.customer_upsert(
            external_ref=ref, name=f"Customer {ref}", by=admin_user, **contacts
        )
        campaigns.customer_attributes_set(
            customer=customer,
            attributes={**data, "product": "tariff", "account_number": ref},
            by=admin_user,
        )
    segment = campaigns.segment_create(
        name="Tariff customers", definition={"attributes": {"product": "tariff"}}, by=author
    )
    campaign = campaigns.campaign_create(
        name="Price change",
        template_code="rate_change_notice",
        segment=segment,
        category="regulatory",
        by=author,
    )
    approval = campaigns.campaign_submit(campaign=campaign, by=author)
    approvals.approval_decide(approval=approval, by=reviewer2, decision="approve")
    campaign.refresh_from_db()
    return campaign


@postgres_only
def test_a_regulatory_notice_reaches_each_customer_once_on_the_planned_channels(
    mixed_campaign, ops, settings, sync_tasks
):
    settings.CCM_SMS_BACKEND = "notifications.channels.sms.LocmemSmsBackend"
    sms.outbox.clear()
    settings.CCM_BULK_CHUNK = 1
    settings.CCM_CAMPAIGN_HANDOFF_CHUNKS = 1
    # given the plan the reviewer signed
    plan = mixed_campaign.channel_plan
    assert plan["channels"] == {"email": 1, "print": 2, "sms": 1}
    assert plan["unreachable"] == 1
    # and a crash after the first hand-off whose recipients' rows were lost; when the send
    # task runs again, twice
    sent_after_a_lost_commit(mixed_campaign, ops=ops, run=sync_tasks)
    # then every customer has one communication
    mixed_campaign.refresh_from_db()
    assert mixed_campaign.state == "completed"
    made = Communication.objects.filter(correlation_id=mixed_campaign.reference)
    assert sorted(made.values_list("customer__external_ref", flat=True)) == sorted(KINDS)
    # and what was sent on each channel is the signed plan
    sent = Delivery.objects.filter(communication__in=made, state="sent")
    assert Counter(sent.values_list("channel", flat=True)) == plan["channels"]
    # and each provider got each message once: the email, the SMS, the letters in the batch
    assert [m.to for m in mail.outbox] == [["Customer NW-0000-0001 <r-email@example.org>"]]
    assert [m.to for m in sms.outbox] == ["+447911123401"]
    printed = PrintItem.objects.filter(delivery__communication__in=made)
    assert sorted(
        printed.values_list("delivery__communication__customer__external_ref", flat=True)
    ) == [
        "NW-0000-0002",
        "NW-0000-0003",
    ]
    # and the customer nothing durable reaches is listed with the reason
    unreached = CampaignRecipient.objects.get(
        campaign=mixed_campaign, customer__external_ref="NW-0000-0004"
    )
    assert unreached.communication.state == "undeliverable"
    reasons = selectors.unreached(mixed_campaign)
    assert list(reasons) == [unreached.pk]
    assert reasons[unreached.pk].startswith("unreachable: email: no valid email address; ")
    assert reasons[unreached.pk].endswith("print: no valid postal address")


@postgres_only
def test_the_portable_hand_off_makes_what_the_set_based_one_makes(
    approved, ops, monkeypatch, django_capture_on_commit_callbacks
):
    """SQLite (`make run`) hands recipients through the intake, PostgreSQL in SQL: the two must
    make the same communications, so a campaign is the same wherever it runs."""
    from django.db import transaction
    from django.utils import timezone

    monkeypatch.setattr("ccm.tasks.async_task", lambda *a, **k: None)
    campaigns.campaign_schedule(campaign=approved, by=ops)
    assert campaigns.campaign_start(approved.pk)
    approved.refresh_from_db()
    pending = list(
        CampaignRecipient.objects.filter(campaign=approved)
        .order_by("customer_id")
        .values_list("pk", "customer_id")
    )
    half = len(pending) // 2
    # when half is handed each way
    with transaction.atomic():
        campaigns._hand(approved, pending[:half], now=timezone.now())
        campaigns._hand_through_intake(approved, pending[half:], now=timezone.now())
    # then every recipient has one communication, and they differ only in their customer
    made = list(Communication.objects.filter(correlation_id=approved.reference))
    assert sorted(c.customer_id for c in made) == [customer for _, customer in pending]
    shape = {
        (c.template_id, c.category, c.source, c.client, c.created_by_id, c.state, c.urgency)
        for c in made
    }
    assert len(shape) == 1
    assert {c.idempotency_key for c in made} == {
        f"{approved.reference}:{customer}" for _, customer in pending
    }
    recipients = CampaignRecipient.objects.filter(campaign=approved)
    assert {r.state for r in recipients} == {"handed"}
    assert {r.communication_id for r in recipients} == {c.pk for c in made}
    frozen = {r.customer_id: r.data for r in recipients}
    assert all(c.data == frozen[c.customer_id] for c in made)
