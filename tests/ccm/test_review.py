from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from ccm import approvals
from ccm.models import Approval, AuditEvent
from tests.approvables import communication_awaiting_release, version_submitted
from tests.notifications import conftest as notifications_fixtures

sync_tasks = notifications_fixtures.sync_tasks  # the pipeline tests' fixture, shared


@pytest.fixture
def submitted(author):
    return version_submitted(author=author)


@pytest.fixture
def release(author, reviewer, make_user, admin_user, sync_tasks):
    requester = make_user("core-banking", "integrator")
    return communication_awaiting_release(
        author=author, reviewer=reviewer, requester=requester, admin=admin_user, run=sync_tasks
    )


@pytest.fixture
def rita(reviewer, client: Client) -> Client:
    client.force_login(reviewer)
    return client


def test_queue_lists_every_kind_oldest_first_with_its_review_link(submitted, release, rita):
    # given a version submitted before a communication was held for release
    _, version_approval = submitted
    _, release_approval = release
    # when
    page = rita.get("/review/").content.decode()
    # then
    first = page.index(f'href="/review/{version_approval.pk}/"')
    second = page.index(f'href="/review/{release_approval.pk}/"')
    assert first < second
    assert "Balance letter v1 (letter)" in page  # the template's name first, its code after
    assert "Template version" in page
    assert "Communication release" in page
    assert '<th scope="col">Requested by</th>' in page
    assert "alex" in page  # the author who submitted the version


def test_queue_filters_by_kind(submitted, release, rita):
    _, version_approval = submitted
    _, release_approval = release
    page = rita.get("/review/", {"kind": "notifications.communication"}).content.decode()
    assert f"/review/{release_approval.pk}/" in page
    assert f"/review/{version_approval.pk}/" not in page
    assert '<option value="notifications.communication" selected>' in page


def test_unknown_kind_is_a_400_that_says_what_to_do(submitted, rita):
    response = rita.get("/review/", {"kind": "cases.nothing"})
    assert response.status_code == 400
    assert "choose one from the list" in response.content.decode()


def test_queue_is_for_reviewers_only(author, ops, client):
    assert client.get("/review/")["Location"].startswith("/login/")
    for user in (author, ops):
        client.force_login(user)
        response = client.get("/review/")
        assert response.status_code == 403
        assert b"You may not open this page" in response.content


def test_home_links_the_queue_with_the_count_the_reviewer_can_decide(submitted, rita):
    page = rita.get("/").content.decode()
    assert '<a href="/review/">Sign-off queue</a> <span class="badge" aria-label="1 waiting">' in (
        page
    )


def test_review_page_shows_the_version_proof(submitted, rita):
    version, approval = submitted
    page = rita.get(f"/review/{approval.pk}/").content.decode()
    assert f"/admin/documents/templateversion/{version.pk}/proof.pdf" in page
    assert "Your balance, Ada Lovelace" in page  # the email proof's subject
    assert "print.html" in page  # the source diff
    assert "<legend>Decision</legend>" in page
    proof = rita.get(f"/admin/documents/templateversion/{version.pk}/proof.pdf")
    assert proof["Content-Type"] == "application/pdf"
    assert proof.content.startswith(b"%PDF")


def test_review_page_shows_the_communication_as_it_will_be_sent(release, rita):
    communication, approval = release
    page = rita.get(f"/review/{approval.pk}/").content.decode()
    assert "Ada Lovelace (C-1)" in page
    assert "the template requires a reviewer&#x27;s release" in page
    assert f"/api/v1/documents/{communication.document.public_id}/pdf" in page
    email = rita.get(f"/admin/notifications/communication/{communication.pk}/email.html")
    assert email.status_code == 200
    assert b"you owe" in email.content
    assert email["Content-Security-Policy"].startswith("default-src 'none'")
    assert email["X-Frame-Options"] == "SAMEORIGIN"
    pdf = rita.get(f"/api/v1/documents/{communication.document.public_id}/pdf")
    assert pdf["Content-Type"] == "application/pdf"


def test_approving_records_the_decision_and_returns_to_the_queue(submitted, rita, reviewer):
    version, approval = submitted
    # when
    response = rita.post(
        f"/review/{approval.pk}/", {"decision": "approve", "comment": "Wording checked."}
    )
    # then
    assert response.status_code == 302
    assert response["Location"] == "/review/"
    approval.refresh_from_db()
    version.refresh_from_db()
    assert (approval.state, approval.decided_by, approval.comment) == (
        "approved",
        reviewer,
        "Wording checked.",
    )
    assert version.state == "approved"
    queue = rita.get("/review/").content.decode()
    assert "Approved: Balance letter v1 (letter). Recorded." in queue
    assert f"/review/{approval.pk}/" not in queue


def test_reject_without_a_comment_is_refused_and_nothing_changes(submitted, rita):
    _, approval = submitted
    response = rita.post(f"/review/{approval.pk}/", {"decision": "reject", "comment": "  "})
    assert response.status_code == 400
    page = response.content.decode()
    assert 'role="alert"' in page
    assert "Say why when you reject or request changes." in page
    approval.refresh_from_db()
    assert approval.state == "pending"


def test_the_author_is_refused_on_screen_by_the_four_eyes_rule(submitted, author, client):
    # given the author also holds the reviewer role
    _, approval = submitted
    author.groups.add(Group.objects.get(name="compliance_reviewer"))
    client.force_login(author)
    assert "yours: another reviewer decides" in client.get("/review/").content.decode()
    # when
    response = client.post(f"/review/{approval.pk}/", {"decision": "approve"})
    # then
    assert response.status_code == 403
    assert "Four-eyes rule" in response.content.decode()
    approval.refresh_from_db()
    assert approval.state == "pending"
    assert not AuditEvent.objects.filter(action="approval.approved").exists()


def test_second_reviewer_learns_it_was_decided_first(submitted, rita, reviewer2):
    _, approval = submitted
    approvals.approval_decide(approval=approval, by=reviewer2, decision="approve")
    response = rita.post(f"/review/{approval.pk}/", {"decision": "reject", "comment": "no"})
    assert response.status_code == 409
    page = response.content.decode()
    assert "already decided" in page
    assert "Record decision" not in page  # nothing left to decide
    assert Approval.objects.get(pk=approval.pk).state == "approved"


def test_rejecting_a_release_rejects_the_communication(release, rita):
    communication, approval = release
    response = rita.post(
        f"/review/{approval.pk}/", {"decision": "reject", "comment": "Amount looks wrong."}
    )
    assert response.status_code == 302
    communication.refresh_from_db()
    assert (communication.state, communication.failure_reason) == (
        "rejected",
        "Amount looks wrong.",
    )


def test_a_kind_registered_later_joins_the_queue_without_a_proof(make_user, author, rita):
    # given an app registers another model, with no proof for the screen
    approvals.register(Group, author_of=lambda group: None, label="Reprint request")
    try:
        subject = Group.objects.create(name="reprint-7")
        approval = approvals.approval_request(
            subject=subject, requested_by=author, purpose="reprint", summary="Reprint for C-7"
        )
        # when
        queue = rita.get("/review/", {"kind": "auth.group"}).content.decode()
        page = rita.get(f"/review/{approval.pk}/").content.decode()
    finally:
        approvals._registry.pop("auth.group", None)
    # then
    assert "Reprint for C-7" in queue
    assert "Reprint request (1)" in queue
    assert "This screen has no proof of a reprint request" in page
    assert "<legend>Decision</legend>" in page


def test_an_approval_whose_subject_is_gone_cannot_be_decided(author, rita):
    # given an approval whose subject was deleted afterwards
    approvals.register(Group, author_of=lambda group: None)
    try:
        subject = Group.objects.create(name="gone")
        approval = approvals.approval_request(subject=subject, requested_by=author, purpose="x")
        subject.delete()
        # when
        page = rita.get(f"/review/{approval.pk}/").content.decode()
        response = rita.post(f"/review/{approval.pk}/", {"decision": "approve"})
    finally:
        approvals._registry.pop("auth.group", None)
    # then
    assert "no longer exists" in page
    assert "Record decision" not in page
    assert response.status_code == 409
    approval.refresh_from_db()
    assert approval.state == "pending"


def test_a_held_letter_going_by_post_shows_its_envelope_address_and_print_proof_not_email(
    author, reviewer, make_user, admin_user, sync_tasks, rita
):
    # given a letter held for release, going by post (the customer has no email address)
    communication, approval = communication_awaiting_release(
        author=author,
        reviewer=reviewer,
        requester=make_user("core-banking", "integrator"),
        admin=admin_user,
        run=sync_tasks,
        by_post=True,
    )

    # when the reviewer opens it
    page = rita.get(f"/review/{approval.pk}/").content.decode()

    # then they see where it is posted and the printed letter, and no email text
    assert (
        '<address id="postal-address">Ada Lovelace<br>1 Analytical Row<br>London N1 1AA</address>'
        in page
    )
    assert f'src="/admin/notifications/communication/{communication.pk}/document.pdf"' in page
    assert "Subject:" not in page
    assert "email-proof" not in page
    assert f"Release {communication.template.name} to" in page  # the title names the template
    assert "<strong>Pending</strong>" in page  # the state in words
    # and the print proof is the archived PDF, shown inline to a reviewer
    proof = rita.get(f"/admin/notifications/communication/{communication.pk}/document.pdf")
    assert proof.status_code == 200
    assert proof["Content-Type"] == "application/pdf"
    assert b"".join(proof.streaming_content).startswith(b"%PDF")
