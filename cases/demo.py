"""Demo data for `make run`: a complaint worked by the demo agent, its acknowledgement sent."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from cases import services
from cases.models import Case, CaseType
from documents import selectors as document_selectors
from notifications.models import Customer

DEMO_CUSTOMER = "NW-2048-7731"
DEMO_SUBJECT = "Escape-of-water claim took too long to settle"


def seed_complaint() -> None:
    """Idempotent: the complaint is opened once; nothing happens before the library and the
    demo customers exist."""
    customer = Customer.objects.filter(external_ref=DEMO_CUSTOMER).first()
    agent = get_user_model().objects.filter(username="agent").first()
    if customer is None or agent is None:
        return
    if document_selectors.version_for_sending(code="complaint_acknowledgement") is None:
        return
    if Case.objects.filter(
        customer=customer, case_type=CaseType.COMPLAINT, subject=DEMO_SUBJECT
    ).exists():
        return
    case = services.case_open(
        case_type=CaseType.COMPLAINT,
        subject=DEMO_SUBJECT,
        customer=customer,
        description="Phoned in: claim CLM-2025-018812 settled late; adjuster changed unannounced.",
        details={
            "channel": "phone",
            "product": "home_insurance",
            "account_reference": "Policy NHI-4471093",
            "summary": (
                "You told us that your escape-of-water claim (CLM-2025-018812) has taken too "
                "long to settle, that you had to chase us several times for updates, and that "
                "you were not told your loss adjuster had changed."
            ),
        },
        received_at=timezone.now() - timedelta(days=1),
        assignee=agent,
        by=agent,
    )
    case = services.case_start(case=case, by=agent)
    services.milestone_reach(case=case, code="acknowledgement", by=agent)
