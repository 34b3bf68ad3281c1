"""What a compliance reviewer sees of a communication waiting for its release: why it waits,
who it goes to and through which channels, the archived PDF and each rendered message exactly as
it would be sent. Shown by the kernel's sign-off screen through the proof registered with
`ccm.approvals`."""

from __future__ import annotations

import json

from ccm.approvals import Proof
from notifications.models import Communication

PROOF_TEMPLATE = "notifications/communication_proof.html"


def communication_proof(communication: Communication) -> Proof:
    trace = communication.decision_trace or []
    chosen = [step for step in trace if step.get("decision") == "chosen"]
    rendered = communication.rendered or {}
    # A letter is reviewed as it will be posted: the envelope's address and the printed pages,
    # not the email text a template also has (shown only when email is one of the channels).
    by_post = any(step.get("channel") == "print" for step in chosen) or (
        not chosen and communication.channel_override == "print"
    )
    channels = {step.get("channel") for step in chosen}
    return Proof(
        PROOF_TEMPLATE,
        {
            "communication": communication,
            "why": [step["reason"] for step in trace if step.get("decision") == "release"],
            "chosen": chosen,
            "by_post": by_post,
            "postal": postal_lines(communication) if by_post else [],
            "rendered": {
                channel: content
                for channel, content in rendered.items()
                if not by_post or channel in channels
            },
            "data": json.dumps(communication.data, indent=2, sort_keys=True, ensure_ascii=False),
        },
    )


def postal_lines(communication: Communication) -> list[str]:
    """The name and address lines the letter's envelope will carry (as printing takes them: a
    reprint's own address, else the customer's postal address on record)."""
    override = communication.address_override if communication.channel_override == "print" else ""
    source = override.split(" / ") if override else communication.customer.postal_address or []
    return [communication.customer.name, *(str(line) for line in source if str(line).strip())]
