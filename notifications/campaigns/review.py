"""What a compliance reviewer sees of a campaign before signing: the frozen audience (hash,
count, channel plan), the segment definition as it was, the template version and a sample."""

from __future__ import annotations

import json

from ccm.approvals import Proof
from notifications.campaigns.models import Campaign, CampaignRecipient

PROOF_TEMPLATE = "campaigns/campaign_proof.html"


def campaign_proof(campaign: Campaign) -> Proof:
    sample = (
        CampaignRecipient.objects.filter(campaign=campaign)
        .select_related("customer")
        .order_by("customer_id")[:10]
    )
    return Proof(
        PROOF_TEMPLATE,
        {
            "campaign": campaign,
            "plan": campaign.channel_plan or {},
            "definition": json.dumps(
                campaign.segment_snapshot.get("definition", {}), indent=2, sort_keys=True
            ),
            "sample": sample,
        },
    )
