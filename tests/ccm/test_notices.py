"""Work that finds its people (ccm/notices.py, notifications/channels/notices.py): notices of
decisions in the app and by mail, counts of what waits in the navigation, the opt-in daily digest,
no bulk four-eyes decisions in the admin, and irreversible admin actions that ask first."""

from __future__ import annotations

from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext

from ccm import approvals, notices
from ccm.models import Approval, Notice
from notifications.channels import notices as notice_mail
from tests.approvables import version_submitted
from tests.notifications import conftest as notifications_fixtures

sync_tasks = notifications_fixtures.sync_tasks


def test_a_decision_tells_the_requester_in_the_app_and_by_mail(author, reviewer, sync_tasks):
    # given an author with an address submitted a version
    author.email = "alex@example.org"
    author.save()
    _, approval = version_submitted(author=author)
    mail.outbox.clear()
    # when the reviewer asks for changes
    sync_tasks(
        approvals.approval_decide,
        approval=approval,
        by=reviewer,
        decision="request_changes",
        comment="Say when the rate applies.",
    )
    # then the author is told once, in the app and by mail, with where to act
    notice = Notice.objects.get()
    assert (notice.user, notice.kind) == (author, "approval.changes_requested")
    assert notice.title == "Changes requested: Balance letter v1 (letter)"
    assert "Comment: Say when the rate applies." in notice.body
    (sent,) = mail.outbox
    assert sent.to == ["alex@example.org"]
    assert sent.extra_headers["Message-ID"] == notice.message_id
    notice.refresh_from_db()
    assert notice.sent_at is not None
    # and sending it again (a retried task) sends nothing more
    assert notice_mail.notice_mail_send(notice.pk) is False
    assert len(mail.outbox) == 1


def test_the_notice_list_counts_unread_and_opening_one_marks_it_read(author, client):
    notice = notices.notice_create(
        user=author, kind="approval.approved", title="Approved: x", url="/templates/"
    )
    client.force_login(author)
    page = client.get("/notices/").content.decode()
    assert "Approved: x" in page
    assert '<span class="badge">1<span class="visually-hidden"> unread</span>' in page
    response = client.post(f"/notices/{notice.pk}/open/")
    assert response["Location"] == "/templates/"
    notice.refresh_from_db()
    assert notice.read_at is not None
    assert "unread</span>" not in client.get("/notices/").content.decode()


def test_nobody_opens_another_persons_notice(author, reviewer, client):
    notice = notices.notice_create(user=author, kind="x", title="Mine")
    client.force_login(reviewer)
    assert client.post(f"/notices/{notice.pk}/open/").status_code == 404
    assert "Mine" not in client.get("/notices/").content.decode()


def test_navigation_counts_what_waits_with_one_query_per_kind(
    author, reviewer, ops, make_user, client
):
    from ccm.roles import Role

    version_submitted(author=author)
    client.force_login(reviewer)
    page = client.get("/").content.decode()
    assert '<span class="badge">1<span class="visually-hidden"> sign-offs</span>' in page
    # the counts cost a query each (sign-offs, releases, unread), whatever the numbers
    both = make_user("bea", Role.COMPLIANCE_REVIEWER, Role.OPERATIONS)
    client.force_login(both)
    client.get("/notices/")
    with CaptureQueriesContext(connection) as few:
        client.get("/notices/")
    for _ in range(5):
        version_submitted(author=author, code=f"letter-{_}")
    with CaptureQueriesContext(connection) as many:
        page = client.get("/notices/").content.decode()
    assert len(many) == len(few)
    assert '<span class="badge">6<span class="visually-hidden"> sign-offs</span>' in page
    assert "Exceptions" in page


def test_a_navigation_count_past_the_cap_says_cap_plus_and_reads_no_further(
    author, reviewer, client, monkeypatch
):
    from ccm import notices

    # given more sign-offs waiting than a badge counts
    monkeypatch.setattr(notices, "WORK_COUNT_CAP", 3)
    for n in range(5):
        version_submitted(author=author, code=f"letter-{n}")
    client.force_login(reviewer)

    # when a page with the navigation is opened
    with CaptureQueriesContext(connection) as queries:
        page = client.get("/notices/").content.decode()

    # then the badge says "3+", counted over at most 4 rows
    assert '<span class="badge">3+<span class="visually-hidden"> sign-offs</span>' in page
    counts = [q["sql"] for q in queries if "ccm_approval" in q["sql"] and "COUNT(" in q["sql"]]
    assert counts
    assert all("LIMIT 4" in sql for sql in counts)


def test_the_daily_digest_is_opt_in_and_sent_once_a_day(author, reviewer, client, sync_tasks):
    # given a reviewer with work waiting, who opts in on the notices page
    reviewer.email = "rita@example.org"
    reviewer.save()
    version_submitted(author=author)
    client.force_login(reviewer)
    client.post("/notices/", {"action": "digest", "daily_digest": "on"})
    mail.outbox.clear()
    # when the daily task runs (twice: a retry)
    assert sync_tasks(notice_mail.digests_send) == 1
    assert sync_tasks(notice_mail.digests_send) == 0
    # then the reviewer got one digest naming what waits; the author, not opted in, none
    (sent,) = mail.outbox
    assert sent.to == ["rita@example.org"]
    assert "Sign-offs: 1" in sent.body
    assert not Notice.objects.filter(user=author).exists()


def test_approvals_cannot_be_decided_in_bulk_from_the_admin_list(
    author, reviewer, client, admin_user
):
    _, approval = version_submitted(author=author)
    client.force_login(reviewer)
    page = client.get("/admin/ccm/approval/").content.decode()
    assert "approve_selected" not in page
    client.post(
        "/admin/ccm/approval/",
        {"action": "approve_selected", "index": 0, "_selected_action": [approval.pk]},
    )
    assert Approval.objects.get(pk=approval.pk).state == "pending"


def test_publishing_from_the_admin_list_asks_first(author, reviewer, admin_user, client):
    version, approval = version_submitted(author=author)
    approvals.approval_decide(approval=approval, by=reviewer, decision="approve")
    client.force_login(admin_user)
    post = {"action": "publish", "index": 0, "_selected_action": [version.pk]}
    asked = client.post("/admin/documents/templateversion/", post)
    assert "This cannot be undone" in asked.content.decode()
    version.refresh_from_db()
    assert version.state == "approved"
    client.post("/admin/documents/templateversion/", {**post, "confirmed": "yes"})
    version.refresh_from_db()
    assert version.state == "published"
