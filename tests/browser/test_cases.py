"""The case screens in a real browser: operations regenerate a communication whose composition
failed after fixing its data; an agent works a complaint from their queue to its acknowledgement
letter; the case's action buttons worked with the keyboard alone."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from cases import services
from cases.models import Case
from notifications.models import Communication
from notifications.pipeline import tasks
from tests.browser.test_review import _outline, _tab_to
from tests.cases import conftest as cases_fixtures
from tests.cases.conftest import COMPLAINT_DETAILS, stricter_letter
from tests.cases.conftest import request as letter_request
from tests.notifications import conftest as notifications_fixtures
from tests.notifications.conftest import publish

customer = notifications_fixtures.customer
integrator = notifications_fixtures.integrator
letter = notifications_fixtures.letter
library = cases_fixtures.library
_alerts_captured = cases_fixtures._alerts_captured  # internal alerts land in mail.outbox


@pytest.fixture
def compose_failed(request, letter, customer, integrator, author, reviewer, ops):
    """A letter accepted against version 1, composed once version 2 (which also needs an
    account number) is published: composition fails, an exception case opens."""
    communication = letter_request(customer, integrator)  # tasks are queued, not run, until…
    run = request.getfixturevalue("sync_tasks")  # …from here they run at once
    publish(stricter_letter(), author=author, reviewer=reviewer)
    run(tasks.communication_compose, communication.pk)
    communication.refresh_from_db()
    assert communication.state == "compose_failed"
    return communication


def test_operations_regenerate_a_failed_communication_after_fixing_its_data(
    page: Page, login, ops, compose_failed
):
    case = Case.objects.get(case_type="exception")
    # given operations follow the home page's link to the exception queue
    login(ops)
    page.get_by_role("link", name="Exceptions").first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Exceptions")
    row = page.get_by_role("row").filter(has_text=case.reference)
    expect(row).to_contain_text("C-1")  # the customer
    expect(row).to_contain_text("letter")  # the document type
    expect(row).to_contain_text("account: 'account' is a required property")
    expect(row).to_contain_text("Correct account in the data, then regenerate")
    # when they open the case, then its regenerate form
    row.get_by_role("link", name=case.reference, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(case.reference)
    page.get_by_role("link", name="Correct the data and regenerate").click()
    # the data is there as fields (not the addressee: that is the customer record's); the one
    # that failed says so
    expect(page.get_by_label("balance")).to_have_value("12.5")
    expect(page.get_by_label("name")).to_have_count(0)
    account = page.get_by_label("account")
    expect(account).to_have_attribute("aria-invalid", "true")
    expect(account).to_have_accessible_description(re.compile("Required: fill this in."))
    # when they fix it and regenerate
    account.fill("ACC-42")
    page.get_by_role("button", name="Regenerate and send").click()
    # then the case page says it was sent and the case is resolved
    expect(page.get_by_role("status").first).to_contain_text(
        f"Communication {compose_failed.pk} is being composed again"
    )
    facts = page.locator("dl.facts").first
    expect(facts).to_contain_text("Resolved")
    expect(page.get_by_text("Regenerated communication sent").first).to_be_visible()
    compose_failed.refresh_from_db()
    assert (compose_failed.state, compose_failed.data["account"]) == ("sent", "ACC-42")
    case.refresh_from_db()
    assert (case.state, case.assignee) == ("resolved", ops)
    # and it is gone from the queue
    page.get_by_role("link", name="Exceptions").first.click()
    expect(page.get_by_text("No open exceptions.")).to_be_visible()


@pytest.fixture
def complaint(customer, agent, library) -> Case:
    # Received three weeks ago: the acknowledgement (two business days) is overdue.
    return services.case_open(
        case_type="complaint",
        subject="Claim settled late",
        customer=customer,
        details=COMPLAINT_DETAILS,
        received_at=timezone.now() - timedelta(days=21),
        assignee=agent,
        by=agent,
    )


def test_agent_works_a_complaint_to_its_acknowledgement_letter(
    page: Page, login, agent, complaint, sync_tasks
):
    # given the agent opens their queue from the home page
    login(agent)
    page.get_by_role("link", name="My cases").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Cases")
    row = page.get_by_role("row").filter(has_text=complaint.reference)
    # the SLA indicator says it in words, not colour alone
    expect(row).to_contain_text(re.compile(r"Overdue by \d+ business days"))
    expect(row).to_contain_text("Acknowledgement due")
    # when they open the case, start work and reach the acknowledgement
    row.get_by_role("link", name=complaint.reference).click()
    page.get_by_role("button", name="Start work").click()
    expect(page.get_by_role("status").first).to_contain_text("work started")
    page.get_by_role("button", name="Reach acknowledgement and send the letter").click()
    # then the letter was sent and the timeline shows it, with links to it and its PDF
    letter = Communication.objects.get(template__code="complaint_acknowledgement")
    expect(page.get_by_role("status").first).to_contain_text(
        f"Acknowledgement reached; letter Complaint acknowledgement requested "
        f"(communication {letter.pk})"
    )
    timeline = page.locator("ol.timeline")
    expect(timeline).to_contain_text(
        "Acknowledgement reached (late); letter Complaint acknowledgement requested"
    )
    expect(timeline).to_contain_text(f"Complaint acknowledgement (communication {letter.pk}): sent")
    pdf_link = timeline.get_by_role("link", name="PDF")
    pdf = page.request.get(pdf_link.get_attribute("href") or "")
    assert (pdf.status, pdf.headers["content-type"]) == (200, "application/pdf")
    assert pdf.body().startswith(b"%PDF")
    milestone = page.get_by_role("row").filter(has_text="Acknowledgement")
    expect(milestone).to_contain_text(f"Complaint acknowledgement (communication {letter.pk})")
    expect(milestone).to_contain_text("late")
    letter.refresh_from_db()
    assert letter.state == "sent"


def test_keyboard_only_the_case_actions(page: Page, login, agent, complaint):
    login(agent)
    page.goto(f"/cases/{complaint.reference}/")
    # the first Tab lands on the skip link
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Enter")
    # Start work: reached by Tab, focus visible, Enter presses it
    start = page.get_by_role("button", name="Start work")
    _tab_to(page, start)
    expect(start).to_be_focused()
    assert _outline(start) == "solid 3px"
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").first).to_contain_text("work started")
    # Wait on the customer: its reason is a labelled field in a named group
    group = page.get_by_role("group", name="Wait on the customer")
    reason = group.get_by_label("Waiting for")
    page.keyboard.press("Tab")  # a new page: the skip link first, then into the content
    page.keyboard.press("Enter")
    _tab_to(page, reason, limit=40)
    page.keyboard.type("The signed claim form")
    submit = group.get_by_role("button", name="Wait on customer")
    _tab_to(page, submit)
    assert _outline(submit) == "solid 3px"
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").first).to_contain_text("waiting on the customer")
    expect(page.locator("dl.facts").first).to_contain_text("Clock stopped: waiting on the customer")
    complaint.refresh_from_db()
    assert (complaint.state, complaint.paused_at is not None) == ("waiting", True)
    # and Resume, the one move waiting allows besides resolving, restarts the clock
    resume = page.get_by_role("button", name="Resume (restart the clock)")
    _tab_to(page, resume, limit=40)
    page.keyboard.press("Enter")
    expect(page.get_by_role("status").first).to_contain_text("resumed")
    complaint.refresh_from_db()
    assert complaint.state == "in_progress"
