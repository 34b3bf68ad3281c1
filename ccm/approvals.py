"""Four-eyes sign-off on any approvable object.

An app registers its model once (in `AppConfig.ready()`), saying who authored an object and what
happens to the object on each decision. The kernel then owns requesting, deciding and
withdrawing, the four-eyes rule and the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from django_fsm import ConcurrentTransition

from ccm import audit
from ccm.models import Approval, ApprovalState, Decision

DecisionHandler = Callable[[models.Model, Approval], None]


class ApprovalConflict(Exception):
    """The approval was decided by someone else first (or is otherwise no longer pending)."""


class NotApprovable(Exception):
    pass


@dataclass(frozen=True)
class Proof:
    """What a reviewer looks at before deciding: a template fragment the review screen includes
    (its headings start at h2) and the context it needs."""

    template: str
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Approvable:
    author_of: Callable[[models.Model], object | None]
    on_decision: DecisionHandler | None = None
    review_url: Callable[[models.Model], str] | None = None
    kind: str = ""
    label: str = ""
    proof: Callable[[models.Model], Proof] | None = None
    # A release lets a held message go out; the rest (template versions, campaigns) are
    # sign-offs. The navigation counts the two apart.
    release: bool = False
    decided_url: Callable[[models.Model], str] | None = None


_registry: dict[str, Approvable] = {}


def register(
    model: type[models.Model],
    *,
    author_of: Callable[[models.Model], object | None],
    on_decision: DecisionHandler | None = None,
    review_url: Callable[[models.Model], str] | None = None,
    label: str = "",
    proof: Callable[[models.Model], Proof] | None = None,
    release: bool = False,
    decided_url: Callable[[models.Model], str] | None = None,
) -> None:
    """Declare `model` approvable. `on_decision(subject, approval)` runs inside the deciding
    transaction after the approval's state has changed; `review_url(subject)` is the app's own
    page for the subject; `label` names the kind in the sign-off queue (the model's verbose name
    by default); `proof(subject)` is what the review screen shows above the decision;
    `release` marks a held message's release (counted apart from sign-offs); `decided_url(subject)`
    is where the requester acts once it is decided (publishing an approved template version)."""
    kind = model._meta.label_lower
    _registry[kind] = Approvable(
        author_of=author_of,
        on_decision=on_decision,
        review_url=review_url,
        kind=kind,
        label=label or str(model._meta.verbose_name).capitalize(),
        proof=proof,
        release=release,
        decided_url=decided_url,
    )


def kinds() -> list[Approvable]:
    """Every registered approvable, in the order they were registered."""
    return list(_registry.values())


def approvable_for(approval: Approval) -> Approvable | None:
    """The registration of the approval's subject model (None once it is unregistered)."""
    return _registry.get(f"{approval.subject_type.app_label}.{approval.subject_type.model}")


def review_url_for(approval: Approval) -> str | None:
    approvable = approvable_for(approval)
    if approvable is None or approvable.review_url is None or approval.subject is None:
        return None
    return approvable.review_url(approval.subject)


def proof_for(approval: Approval) -> Proof | None:
    approvable = approvable_for(approval)
    if approvable is None or approvable.proof is None or approval.subject is None:
        return None
    return approvable.proof(approval.subject)


def _approvable(subject: models.Model) -> Approvable:
    try:
        return _registry[subject._meta.label_lower]
    except KeyError:
        raise NotApprovable(f"{subject._meta.label} is not registered as approvable") from None


def pending_for(subject: models.Model, *, purpose: str | None = None) -> Approval | None:
    qs = Approval.objects.filter(
        subject_type=ContentType.objects.get_for_model(subject),
        subject_id=str(subject.pk),
        state=ApprovalState.PENDING,
    )
    if purpose:
        qs = qs.filter(purpose=purpose)
    return qs.first()


@transaction.atomic
def approval_request(
    *, subject: models.Model, requested_by, purpose: str, summary: str = ""
) -> Approval:
    """Open a pending approval for `subject`. At most one is pending per subject and purpose."""
    approvable = _approvable(subject)
    author = approvable.author_of(subject)
    try:
        with transaction.atomic():
            approval = Approval.objects.create(
                subject_type=ContentType.objects.get_for_model(subject),
                subject_id=str(subject.pk),
                purpose=purpose,
                summary=summary[:300],
                requested_by=requested_by,
                author=author,
            )
    except IntegrityError:
        raise ApprovalConflict(f"An approval for {purpose} is already pending.") from None
    audit.record(
        actor=requested_by,
        action="approval.requested",
        subject=approval,
        after={"purpose": purpose, "subject": f"{subject._meta.label_lower}:{subject.pk}"},
    )
    return approval


_DECIDE = {
    Decision.APPROVE: "approve",
    Decision.REJECT: "reject",
    Decision.REQUEST_CHANGES: "request_changes",
}


@transaction.atomic
def approval_decide(*, approval: Approval, by, decision: str, comment: str = "") -> Approval:
    """Decide a pending approval. The requester and the subject's author are refused
    (PermissionDenied); a reviewer who comes second gets ApprovalConflict."""
    if decision not in _DECIDE:
        raise ValueError(f"Unknown decision {decision!r}; use one of {', '.join(_DECIDE)}.")
    if not by.has_perm("ccm.decide_approval"):
        raise PermissionDenied("Only a compliance reviewer can decide approvals.")
    locked = Approval.objects.select_for_update().get(pk=approval.pk)
    if locked.state != ApprovalState.PENDING:
        raise ApprovalConflict(f"This approval was already decided: it is {locked.state}.")
    before = {"state": locked.state}
    getattr(locked, _DECIDE[Decision(decision)])(by=by, comment=comment, when=timezone.now())
    try:
        locked.save()
    except ConcurrentTransition:
        raise ApprovalConflict("Another reviewer decided this approval first.") from None
    subject = locked.subject
    handler = _approvable(subject).on_decision
    if handler is not None:
        handler(subject, locked)
    audit.record(
        actor=by,
        action=f"approval.{locked.state}",
        subject=locked,
        before=before,
        after={"state": locked.state, "comment": comment},
    )
    _tell_requester(locked, subject)
    approval.refresh_from_db()
    return locked


DECISION_WORDS = {
    ApprovalState.APPROVED: "Approved",
    ApprovalState.REJECTED: "Rejected",
    ApprovalState.CHANGES_REQUESTED: "Changes requested",
}


def _tell_requester(approval: Approval, subject: models.Model) -> None:
    """The requester (and the author, when another person) is told of the decision, in the
    app and by mail, with a link to where they act on it."""
    from ccm import notices  # it reads this module's registry

    approvable = _approvable(subject)
    outcome = DECISION_WORDS[ApprovalState(approval.state)]
    url = approvable.decided_url(subject) if approvable.decided_url else ""
    lines = [
        f"{approvable.label}: {approval.summary}",
        f"{outcome} by {approval.decided_by} on {approval.decided_at:%d %B %Y at %H:%M} UTC.",
    ]
    if approval.comment:
        lines.append(f"Comment: {approval.comment}")
    if approval.state == ApprovalState.APPROVED and approvable.decided_url:
        lines.append("You can publish it now.")
    people = {p for p in (approval.requested_by, approval.author) if p is not None}
    for person in sorted(people, key=lambda p: p.pk):
        notices.notice_create(
            user=person,
            kind=f"approval.{approval.state}",
            title=f"{outcome}: {approval.summary}",
            body="\n".join(lines),
            url=url,
        )


@transaction.atomic
def approval_withdraw(*, approval: Approval, by, comment: str = "") -> Approval:
    locked = Approval.objects.select_for_update().get(pk=approval.pk)
    if by.pk not in {locked.requested_by_id, locked.author_id}:
        raise PermissionDenied("Only the requester or the author can withdraw an approval.")
    if locked.state != ApprovalState.PENDING:
        raise ApprovalConflict(f"This approval was already decided: it is {locked.state}.")
    locked.withdraw(by=by, comment=comment, when=timezone.now())
    locked.save()
    subject = locked.subject
    handler = _approvable(subject).on_decision
    if handler is not None:
        handler(subject, locked)
    audit.record(actor=by, action="approval.withdrawn", subject=locked, after={"comment": comment})
    approval.refresh_from_db()
    return locked
