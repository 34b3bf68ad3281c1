"""Milestones: reaching one sends its letter from the library, linked to the case, and the
timeline tells the story; the case's state machine refuses moves its state does not allow."""

from __future__ import annotations

import io

import pytest
from django.core import mail
from pypdf import PdfReader

from cases import selectors, services
from cases.models import Case, CaseCommunication
from documents.composition import DataInvalid
from notifications.models import Communication
from tests.cases.conftest import COMPLAINT_DETAILS

FINAL_RESPONSE = {
    "decision": "partly_upheld",
    "findings": ["Your claim was moved to another adjuster without telling you."],
    "putting_right": [{"description": "Compensation for the inconvenience", "amount": 150}],
}


@pytest.fixture
def complaint(customer, agent, library) -> Case:
    case = services.case_open(
        case_type="complaint",
        subject="Claim settled late",
        customer=customer,
        details=COMPLAINT_DETAILS,
        assignee=agent,
        by=agent,
    )
    return services.case_start(case=case, by=agent)


def test_reaching_the_acknowledgement_sends_the_letter_linked_to_the_case(
    complaint, agent, sync_tasks
):
    # when
    milestone = sync_tasks(
        services.milestone_reach, case=complaint, code="acknowledgement", by=agent
    )
    # then the letter was requested from the library template for the case, and sent
    communication = Communication.objects.get(pk=milestone.communication_id)
    assert communication.template.code == "complaint_acknowledgement"
    assert (communication.source, communication.correlation_id) == ("case", complaint.reference)
    assert communication.state == "sent"
    assert communication.data["reference"] == complaint.reference
    assert communication.data["handler"]["name"] == "agnes"
    link = CaseCommunication.objects.get(case=complaint)
    assert (link.communication_id, link.role) == (communication.pk, "milestone")
    # the customer got it by email with the letter attached
    sent = mail.outbox[0]
    assert sent.to == ["Ada Lovelace <ada@example.org>"]
    _, pdf, _ = sent.attachments[0]
    letter = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert complaint.reference in letter
    assert "You told us that your claim took too long to settle." in letter
    # and the timeline tells it in order
    actions = [entry.action for entry in selectors.case_timeline(complaint)]
    assert actions[:3] == ["case.opened", "case.assigned", "case.started"]
    reached = actions.index("milestone.acknowledgement")
    assert actions.index("communication.received") > reached
    assert actions.index("communication.composed") > actions.index("communication.received")
    assert actions.index("delivery.sent") >= actions.index("communication.dispatching")


def test_a_milestone_is_reached_once(complaint, agent):
    services.milestone_reach(case=complaint, code="acknowledgement", by=agent)
    with pytest.raises(services.TransitionRefused, match="was reached on"):
        services.milestone_reach(case=complaint, code="acknowledgement", by=agent)
    assert Communication.objects.count() == 1


def test_final_response_without_its_findings_is_refused_and_nothing_is_recorded(complaint, agent):
    with pytest.raises(DataInvalid) as excinfo:
        services.milestone_reach(case=complaint, code="final_response", by=agent)
    assert {e.field for e in excinfo.value.errors} >= {"decision", "findings"}
    assert complaint.milestones.get(code="final_response").reached_at is None
    assert not Communication.objects.exists()


def test_final_response_resolves_the_complaint(complaint, agent):
    # when
    services.milestone_reach(case=complaint, code="final_response", by=agent, data=FINAL_RESPONSE)
    # then
    complaint.refresh_from_db()
    assert complaint.state == "resolved"
    assert complaint.resolution == "Final response sent."
    communication = Communication.objects.get()
    assert communication.data["decision"] == "partly_upheld"
    assert communication.data["final_response_due"] == (
        complaint.milestones.get(code="final_response").due_at.date().isoformat()
    )


def test_an_unknown_milestone_names_the_ones_there_are(complaint, agent):
    with pytest.raises(services.CaseError, match="acknowledgement, interim_update, final_response"):
        services.milestone_reach(case=complaint, code="apology", by=agent)


def test_transitions_follow_the_state_machine(customer, agent):
    case = services.case_open(
        case_type="dispute", subject="Card payment disputed", customer=customer, by=agent
    )
    with pytest.raises(services.TransitionRefused, match="possible now: assign"):
        services.case_close(case=case, by=agent)
    case = services.case_assign(case=case, assignee=agent, by=agent)
    case = services.case_start(case=case, by=agent)
    case = services.case_resolve(case=case, by=agent, resolution="Refunded the payment")
    case = services.case_reopen(case=case, by=agent, reason="The refund bounced")
    assert case.state == "in_progress"
    case = services.case_resolve(case=case, by=agent, resolution="Refunded again")
    case = services.case_close(case=case, by=agent)
    assert (case.state, services.allowed_actions(case)) == ("closed", [])


def test_only_people_who_work_cases_can_be_assigned(customer, agent, make_user):
    case = services.case_open(
        case_type="dispute", subject="Card payment disputed", customer=customer, by=agent
    )
    outsider = make_user("ivy", "integrator")
    with pytest.raises(services.CaseError) as excinfo:
        services.case_assign(case=case, assignee=outsider, by=agent)
    assert excinfo.value.field == "assignee"
    case.refresh_from_db()
    assert case.state == "new"


def test_complaint_details_are_checked_when_the_case_is_opened(customer, agent):
    with pytest.raises(DataInvalid) as excinfo:
        services.case_open(
            case_type="complaint",
            subject="x",
            customer=customer,
            details={**COMPLAINT_DETAILS, "product": "car_insurance"},
            by=agent,
        )
    assert [e.field for e in excinfo.value.errors] == ["product"]
    assert not Case.objects.exists()
