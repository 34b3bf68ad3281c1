"""The case screens in the admin, who may do what with cases, and the demo data."""

from __future__ import annotations

import hashlib
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from cases import services
from cases.models import Case, CaseNote
from ccm.demo import seed_all
from ccm.models import AuditEvent
from ccm.roles import Role
from tests.cases.conftest import COMPLAINT_DETAILS

PHOTO = b"\xff\xd8\xff\xe0 not really a photo"


@pytest.mark.parametrize(
    ("role", "perm", "allowed"),
    [
        (Role.SERVICE_AGENT, "cases.change_case", True),
        (Role.SERVICE_AGENT, "cases.add_casenote", True),
        (Role.SERVICE_AGENT, "cases.handle_exception", False),
        (Role.OPERATIONS, "cases.handle_exception", True),
        (Role.OPERATIONS, "cases.change_case", True),
        (Role.COMPLIANCE_REVIEWER, "cases.view_milestone", True),
        (Role.COMPLIANCE_REVIEWER, "cases.change_case", False),
        (Role.INTEGRATOR, "cases.view_case", False),
    ],
)
def test_case_permissions_per_role(make_user, role, perm, allowed):
    assert make_user(f"u-{role}", role).has_perm(perm) is allowed


@pytest.fixture
def complaint(customer, agent):
    return services.case_open(
        case_type="complaint",
        subject="Claim settled late",
        customer=customer,
        details=COMPLAINT_DETAILS,
        assignee=agent,
        by=agent,
    )


def test_queue_shows_sla_indicators(client, agent, complaint):
    client.force_login(agent)
    page = client.get("/admin/cases/case/?state__exact=assigned")
    assert page.status_code == 200
    html = page.content.decode()
    assert complaint.reference in html
    assert '<span style="color: #2E7D32">&#9679; On Track</span>' in html


def test_a_note_added_on_the_case_page_goes_through_the_service(client, agent, complaint):
    client.force_login(agent)
    url = f"/admin/cases/case/{complaint.pk}/change/"
    page = client.get(url)
    assert page.status_code == 200
    assert "case.opened" in page.content.decode()  # the timeline
    management = dict(
        re.findall(
            r'name="([\w-]+-(?:TOTAL|INITIAL|MIN_NUM|MAX_NUM)_FORMS)"[^>]*value="(\d+)"',
            page.content.decode(),
        )
    )
    response = client.post(
        url,
        {
            **management,
            "subject": complaint.subject,
            "description": "",
            "priority": "high",
            "team": complaint.team,
            "notes-0-body": "Customer sent photos of the kitchen floor",
            "attachments-0-file": SimpleUploadedFile("floor.jpg", PHOTO, content_type="image/jpeg"),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    note = CaseNote.objects.get(case=complaint)
    assert (note.body, note.author) == ("Customer sent photos of the kitchen floor", agent)
    attachment = complaint.attachments.get()
    assert (attachment.name, attachment.size, attachment.content_type) == (
        "floor.jpg",
        len(PHOTO),
        "image/jpeg",
    )
    assert attachment.sha256 == hashlib.sha256(PHOTO).hexdigest()
    assert attachment.file.read() == PHOTO
    complaint.refresh_from_db()
    assert complaint.priority == "high"
    audited = set(
        AuditEvent.objects.filter(subject_id=str(complaint.pk)).values_list("action", flat=True)
    )
    assert {"case.note_added", "case.attachment_added", "case.updated"} <= audited


def test_demo_opens_a_complaint_with_its_acknowledgement_once(db):
    seed_all()
    seed_all()
    case = Case.objects.get(case_type="complaint")
    assert (case.state, case.assignee.username) == ("in_progress", "agent")
    acknowledgement = case.milestones.get(code="acknowledgement")
    assert acknowledgement.reached_at is not None
    assert acknowledgement.communication.template.code == "complaint_acknowledgement"
    assert case.communication_links.get().communication == acknowledgement.communication
