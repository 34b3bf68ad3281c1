"""The reviewer's sign-off screens in a real browser: queue → proof → decision, the four-eyes
refusal on screen, a release rejected, and the whole decision made with the keyboard alone."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from playwright.sync_api import Locator, Page, expect

from ccm.models import Approval
from ccm.roles import Role
from tests.approvables import communication_awaiting_release, version_submitted


@pytest.fixture
def submitted(author):
    return version_submitted(author=author)


@pytest.fixture
def release(author, reviewer, make_user, admin_user, sync_tasks):
    requester = make_user("core-banking", Role.INTEGRATOR)
    return communication_awaiting_release(
        author=author, reviewer=reviewer, requester=requester, admin=admin_user, run=sync_tasks
    )


def test_reviewer_approves_a_template_version_from_the_queue(
    page: Page, login, reviewer, submitted
):
    version, approval = submitted
    # given the reviewer signs in and follows the home page's link to the queue
    login(reviewer)
    page.get_by_role("link", name="Sign-off queue").first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign-off queue")
    row = page.get_by_role("row").filter(has_text="Balance letter v1 (letter)")
    expect(row).to_contain_text("Template version")
    expect(row).to_contain_text("alex")  # requested by the author
    # when they open it
    row.get_by_role("link", name="Balance letter v1 (letter)").click()
    # then the proof is there: the PDF the frame shows is a PDF
    pdf_link = page.get_by_role("link", name="Open the PDF proof of v1")
    frame = page.locator("iframe[title='Proof of v1']")
    assert frame.get_attribute("src") == pdf_link.get_attribute("href")
    proof = page.request.get(pdf_link.get_attribute("href") or "")
    assert proof.status == 200
    assert proof.headers["content-type"] == "application/pdf"
    assert proof.body().startswith(b"%PDF")
    expect(page.get_by_text("Your balance, Ada Lovelace")).to_be_visible()  # the email proof
    # when they approve with a comment
    page.get_by_role("radio", name="Approve").check()
    page.get_by_label("Comment", exact=True).fill("Wording and figures checked.")
    page.get_by_role("button", name="Record decision").click()
    # then they are back on the queue, told so, and the version is gone from it
    expect(page.get_by_role("status")).to_contain_text("Approved: Balance letter v1 (letter)")
    expect(page.get_by_role("link", name="Balance letter v1 (letter)")).to_have_count(0)
    expect(page.get_by_text("Nothing is waiting for sign-off")).to_be_visible()
    version.refresh_from_db()
    approval.refresh_from_db()
    assert version.state == "approved"
    assert (approval.state, approval.decided_by, approval.comment) == (
        "approved",
        reviewer,
        "Wording and figures checked.",
    )


def test_author_trying_to_approve_their_own_version_is_refused_on_screen(
    page: Page, login, author, submitted
):
    # given the author also holds the reviewer role (a small team)
    _, approval = submitted
    author.groups.add(Group.objects.get(name=Role.COMPLIANCE_REVIEWER))
    login(author)
    page.goto(f"/review/{approval.pk}/")
    # when they try to approve their own version
    page.get_by_role("radio", name="Approve").check()
    page.get_by_role("button", name="Record decision").click()
    # then the refusal is on screen and nothing was decided
    expect(page.get_by_role("alert")).to_contain_text("Four-eyes rule")
    expect(page.get_by_role("alert")).to_contain_text("not recorded")
    approval.refresh_from_db()
    assert approval.state == "pending"
    assert approval.decided_by is None


def test_reviewer_rejects_a_communication_awaiting_release(page: Page, login, reviewer, release):
    communication, approval = release
    login(reviewer)
    page.goto("/review/")
    # given the queue filtered to releases
    page.get_by_label("Kind").select_option(label="Communication release (1)")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("row")).to_have_count(2)  # the header and one release
    page.get_by_role("link", name="Release Balance letter").click()
    # the proof: who it goes to, the email as it will be sent, the archived PDF
    expect(page.get_by_text("Ada Lovelace (C-1)", exact=True)).to_be_visible()
    expect(page.locator("iframe[title='Email as it will be sent']")).to_be_visible()
    pdf = page.request.get(
        page.get_by_role("link", name="Open the archived PDF").get_attribute("href") or ""
    )
    assert (pdf.status, pdf.headers["content-type"]) == (200, "application/pdf")
    # when a reject without a reason is refused, then one with a reason is recorded
    page.get_by_role("radio", name="Reject").check()
    page.get_by_role("button", name="Record decision").click()
    expect(page.get_by_role("alert")).to_contain_text("not recorded")
    expect(page.get_by_text("Say why when you reject or request changes.")).to_be_visible()
    assert Approval.objects.get(pk=approval.pk).state == "pending"
    page.get_by_label("Comment", exact=True).fill("The amount does not match the ledger.")
    page.get_by_role("button", name="Record decision").click()
    # then
    expect(page.get_by_role("status")).to_contain_text("Rejected")
    communication.refresh_from_db()
    assert (communication.state, communication.failure_reason) == (
        "rejected",
        "The amount does not match the ledger.",
    )


def _tab_to(page: Page, target: Locator, *, limit: int = 25) -> list[str]:
    """Press Tab until `target` has the focus; returns what the focus passed through."""
    passed = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        if target.evaluate("el => el === document.activeElement"):
            return passed
        passed.append(page.evaluate("document.activeElement.outerHTML.slice(0, 80)"))
    raise AssertionError(f"Tab never reached {target}; it went through {passed}")


def _outline(locator: Locator) -> str:
    return locator.evaluate(
        "el => { const s = getComputedStyle(el); return `${s.outlineStyle} ${s.outlineWidth}`; }"
    )


def test_keyboard_only_decision_with_labelled_controls(page: Page, login, reviewer, submitted):
    version, approval = submitted
    login(reviewer)
    page.goto(f"/review/{approval.pk}/")
    # the first Tab lands on the skip link, which shows itself
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    # the decision controls are reachable by Tab and named by their visible labels
    group = page.get_by_role("group", name="Decision")
    expect(group).to_be_visible()
    approve = group.get_by_role("radio", name="Approve")
    _tab_to(page, approve)
    expect(approve).to_be_focused()
    assert _outline(approve) == "solid 3px"  # focus is visible
    page.keyboard.press("ArrowDown")  # within the group, arrows choose
    page.keyboard.press("ArrowDown")
    changes = group.get_by_role("radio", name="Request changes")
    expect(changes).to_be_focused()
    expect(changes).to_be_checked()
    comment = page.get_by_label("Comment", exact=True)
    _tab_to(page, comment)
    page.keyboard.type("Please add the ombudsman paragraph.")
    submit = page.get_by_role("button", name="Record decision")
    _tab_to(page, submit)
    expect(submit).to_be_focused()
    assert _outline(submit) == "solid 3px"
    page.keyboard.press("Enter")
    # then the decision is recorded and announced
    expect(page.get_by_role("status")).to_contain_text("Changes requested")
    version.refresh_from_db()
    assert version.state == "changes_requested"
    approval.refresh_from_db()
    assert approval.comment == "Please add the ombudsman paragraph."
