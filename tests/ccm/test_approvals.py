from __future__ import annotations

import threading

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, connection, connections, transaction

from ccm import approvals
from ccm.models import Approval, AuditEvent

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="needs PostgreSQL (set DATABASE_URL)"
)


@pytest.fixture
def decisions():
    """Register auth.Group as a stand-in approvable; its author is kept in a dict."""
    seen: list[tuple[str, str]] = []
    authors: dict[int, object] = {}
    approvals.register(
        Group,
        author_of=lambda group: authors.get(group.pk),
        on_decision=lambda group, approval: seen.append((group.name, approval.state)),
    )
    yield seen, authors
    approvals._registry.pop("auth.group", None)


@pytest.fixture
def pending(decisions, author, make_user):
    _, authors = decisions
    subject = Group.objects.create(name="letter-v1")
    authors[subject.pk] = author
    requester = make_user("quinn")
    return approvals.approval_request(subject=subject, requested_by=requester, purpose="publish")


def test_reviewer_approves_and_subject_is_told(pending, reviewer, decisions):
    seen, _ = decisions
    decided = approvals.approval_decide(approval=pending, by=reviewer, decision="approve")
    assert decided.state == "approved"
    assert decided.decided_by == reviewer
    assert decided.decided_at is not None
    assert seen == [("letter-v1", "approved")]
    assert list(AuditEvent.objects.values_list("action", flat=True)) == [
        "approval.requested",
        "approval.approved",
    ]


def test_author_cannot_approve_own_version(pending, author):
    author.groups.add(Group.objects.get(name="compliance_reviewer"))
    with pytest.raises(PermissionDenied, match="Four-eyes"):
        approvals.approval_decide(approval=pending, by=author, decision="approve")
    pending.refresh_from_db()
    assert pending.state == "pending"


def test_requester_cannot_decide(pending):
    requester = pending.requested_by
    requester.groups.add(Group.objects.get(name="compliance_reviewer"))
    with pytest.raises(PermissionDenied):
        approvals.approval_decide(approval=pending, by=requester, decision="reject")
    pending.refresh_from_db()
    assert pending.state == "pending"


def test_only_reviewers_decide(pending, agent):
    with pytest.raises(PermissionDenied, match="compliance reviewer"):
        approvals.approval_decide(approval=pending, by=agent, decision="approve")


@pytest.mark.parametrize("column", ["requested_by_id", "author_id"])
def test_database_refuses_self_approval(pending, column):
    # Bypassing the service entirely: the check constraint still holds.
    with pytest.raises(IntegrityError), transaction.atomic():
        Approval.objects.filter(pk=pending.pk).update(
            decided_by_id=getattr(pending, column), state="approved"
        )


def test_second_decision_is_a_conflict(pending, reviewer, reviewer2):
    approvals.approval_decide(approval=pending, by=reviewer, decision="reject", comment="no")
    with pytest.raises(approvals.ApprovalConflict, match="already decided"):
        approvals.approval_decide(approval=pending, by=reviewer2, decision="approve")
    pending.refresh_from_db()
    assert (pending.state, pending.decided_by) == ("rejected", reviewer)


def test_one_pending_approval_per_subject_and_purpose(pending):
    with pytest.raises(approvals.ApprovalConflict):
        approvals.approval_request(
            subject=pending.subject, requested_by=pending.requested_by, purpose="publish"
        )


def test_requester_withdraws(pending, decisions):
    seen, _ = decisions
    approvals.approval_withdraw(approval=pending, by=pending.requested_by, comment="typo")
    pending.refresh_from_db()
    assert pending.state == "withdrawn"
    assert seen == [("letter-v1", "withdrawn")]


def test_stranger_cannot_withdraw(pending, reviewer):
    with pytest.raises(PermissionDenied):
        approvals.approval_withdraw(approval=pending, by=reviewer)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_concurrent_decisions_exactly_one_wins(decisions, make_user):
    # given a pending approval and two reviewers who press the button at the same moment
    subject = Group.objects.create(name="letter-v2")
    requester = make_user("quinn")
    first, second = make_user("r1", "compliance_reviewer"), make_user("r2", "compliance_reviewer")
    approval = approvals.approval_request(
        subject=subject, requested_by=requester, purpose="publish"
    )
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def decide(user, decision):
        try:
            barrier.wait()
            approvals.approval_decide(
                approval=Approval.objects.get(pk=approval.pk), by=user, decision=decision
            )
            outcomes.append("won")
        except approvals.ApprovalConflict:
            outcomes.append("conflict")
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=decide, args=(first, "approve")),
        threading.Thread(target=decide, args=(second, "reject")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then exactly one decision stands
    assert sorted(outcomes) == ["conflict", "won"]
    approval.refresh_from_db()
    assert approval.state in {"approved", "rejected"}
    assert (
        AuditEvent.objects.filter(action__in=["approval.approved", "approval.rejected"]).count()
        == 1
    )


def test_the_approval_list_shows_reviewers_everything_and_others_only_their_requests(
    pending, reviewer, author, agent, make_user
):
    from rest_framework.test import APIClient

    other = approvals.approval_request(
        subject=Group.objects.create(name="letter-v2"), requested_by=agent, purpose="publish"
    )

    def listed(user) -> list[int]:
        client = APIClient()
        client.force_login(user)
        response = client.get("/api/v1/approvals")
        assert response.status_code == 200
        return sorted(item["id"] for item in response.json()["results"])

    # reviewers, who may decide, see every pending approval
    assert listed(reviewer) == sorted([pending.pk, other.pk])
    # a requester sees only their own; anyone else signed in sees none
    assert listed(pending.requested_by) == [pending.pk]
    assert listed(agent) == [other.pk]
    assert listed(author) == []
