from __future__ import annotations

import pytest

from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.campaigns import services as campaigns
from notifications.campaigns.models import CampaignRecipient
from notifications.customers import services as customer_services
from tests.notifications.conftest import publish, sync_tasks  # noqa: F401


@pytest.fixture
def document_ready(author, reviewer):
    return publish(read_folder(LIBRARY / "document_ready"), author=author, reviewer=reviewer)


def notice_data(i: int) -> dict:
    return {
        "reference": f"DOC-{i:05d}",
        "document_title": "Changes to your mortgage rate",
        "document_date": "2026-04-12",
    }


def make_customer(i: int, by, *, product: str = "variable_mortgage", email: bool = True):
    customer, _ = customer_services.customer_upsert(
        external_ref=f"M-{i:03d}",
        name=f"Customer {i}",
        emails=[f"c{i}@example.org"] if email else [],
        by=by,
    )
    return campaigns.customer_attributes_set(
        customer=customer,
        attributes={"product": product, "postcode": f"N{i % 2} 1AA", **notice_data(i)},
        by=by,
    )


@pytest.fixture
def mortgage_customers(admin_user):
    return [make_customer(i, admin_user) for i in range(4)]


@pytest.fixture
def segment(author):
    return campaigns.segment_create(
        name="Variable mortgages",
        definition={"attributes": {"product": "variable_mortgage"}},
        by=author,
    )


@pytest.fixture
def campaign_factory(document_ready, segment, author):
    def make(**kwargs):
        fields = {
            "name": "Rate change",
            "template_code": "document_ready",
            "segment": segment,
            "category": "regulatory",
            "by": author,
            **kwargs,
        }
        return campaigns.campaign_create(**fields)

    return make


@pytest.fixture
def approved(campaign_factory, mortgage_customers, author, reviewer2):
    """A regulatory campaign to the four mortgage customers, submitted and approved."""
    from ccm import approvals

    campaign = campaign_factory()
    approval = campaigns.campaign_submit(campaign=campaign, by=author)
    approvals.approval_decide(approval=approval, by=reviewer2, decision="approve")
    campaign.refresh_from_db()
    return campaign


def sent_after_a_lost_commit(campaign, *, ops, run) -> None:
    """Schedule and start `campaign`, hand its first chunk, then lose the recipients' rows of
    that hand-off (as if their commit had been lost: the communications exist, the recipients
    are still pending), and run the send task twice; `run` is the `sync_tasks` fixture."""
    campaigns.campaign_schedule(campaign=campaign, by=ops)  # no sync: nothing runs yet
    assert campaigns.campaign_start(campaign.pk)
    run(campaigns.campaign_chunk_send, campaign.pk)
    CampaignRecipient.objects.filter(campaign=campaign).update(
        state="pending", communication=None, handed_at=None
    )
    run(campaigns.campaign_send, campaign.pk)
    run(campaigns.campaign_send, campaign.pk)
