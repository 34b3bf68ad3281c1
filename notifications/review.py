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
    return Proof(
        PROOF_TEMPLATE,
        {
            "communication": communication,
            "why": [step["reason"] for step in trace if step.get("decision") == "release"],
            "chosen": [step for step in trace if step.get("decision") == "chosen"],
            "rendered": communication.rendered or {},
            "data": json.dumps(communication.data, indent=2, sort_keys=True, ensure_ascii=False),
        },
    )
