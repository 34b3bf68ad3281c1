"""Approval by email: when a reprint or a letter waits for release, each reviewer who may decide
it gets a mail (through the sender profile's "approval" route, the Gmail gateway by default)
carrying a signed, expiring, single-use token bound to the approval and to that reviewer. A
reply whose first word is APPROVE or REJECT, from that reviewer's own address, decides it
through `ccm.approvals.approval_decide` — so four-eyes holds exactly as on the screen.

Anything else (another sender, a spent, expired or tampered token, another first word) changes
nothing and is written to the audit log with the reason.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.urls import reverse

from cases.requests.models import ApprovalMail
from ccm import approvals, audit, links
from ccm.models import Approval, ApprovalState
from ccm.roles import Role
from ccm.tasks import Sweep, enqueue
from notifications.channels.internal import internal_mail_send_once

logger = logging.getLogger(__name__)

REPLY_PURPOSE = "approval.reply"
SEND_TASK = "cases.requests.tasks.approval_mail_send"
MAX_ATTEMPTS = 5
# The token travels in the subject ("Re:" keeps it) and in the body (a quoted reply keeps it).
TOKEN_RE = re.compile(r"\[ccm:([A-Za-z0-9_\-:.]+)\]")
FIRST_WORD_RE = re.compile(r"\s*([A-Za-z]+)")
DECISIONS = {"approve": "approve", "reject": "reject"}

UNSENT_SWEEP = Sweep(
    name="cases.approval_mails_unsent",
    queryset=lambda: ApprovalMail.objects.filter(sent_at__isnull=True, attempts__lt=MAX_ATTEMPTS),
    task=SEND_TASK,
    older_than=timedelta(minutes=5),
    timestamp_field="created_at",
)


def _reviewers(approval: Approval):
    excluded = [pk for pk in (approval.requested_by_id, approval.author_id) if pk is not None]
    return (
        get_user_model()
        .objects.filter(is_active=True)
        .filter(Q(groups__name=Role.COMPLIANCE_REVIEWER) | Q(is_superuser=True))
        .exclude(email="")
        .exclude(pk__in=excluded)
        .distinct()
        .order_by("pk")
    )


def reply_token(*, approval: Approval, reviewer) -> str:
    """A token that lets `reviewer` (only) decide `approval` by replying, once, in time."""
    return links.link_create(
        subject=approval,
        purpose=REPLY_PURPOSE,
        ttl=timedelta(hours=settings.CASES_APPROVAL_REPLY_TTL_HOURS),
        single_use=True,
        data={"reviewer": reviewer.pk},
    )


def approval_mails_queue(*, approval: Approval, lines: list[str]) -> list[ApprovalMail]:
    """Write one mail per reviewer who may decide `approval` (inside the caller's transaction)
    and send each after commit. `lines` describe what is to be released."""
    label = approvals.approvable_for(approval)
    kind = label.label if label else "Approval"
    review_url = settings.CCM_PUBLIC_BASE_URL.rstrip("/") + reverse(
        "review-approval", args=[approval.pk]
    )
    hours = settings.CASES_APPROVAL_REPLY_TTL_HOURS
    mails = []
    for reviewer in _reviewers(approval):
        token = reply_token(approval=approval, reviewer=reviewer)
        text = "\n".join(
            [
                f"{kind} waiting for your release: {approval.summary}",
                "",
                *lines,
                "",
                f"Review it: {review_url}",
                "",
                "Or reply to this mail with APPROVE or REJECT as the first word (a rejection's",
                "reason may follow on the same line). Only a reply from your own address counts,",
                f"once, within {hours} hours; the requester cannot release their own request.",
                "",
                f"Reference: [ccm:{token}]",
            ]
        )
        mail = ApprovalMail.objects.create(
            approval=approval,
            reviewer=reviewer,
            to=reviewer.email,
            subject=f"Approval needed: {approval.summary} [ccm:{token}]"[:500],
            text=text + "\n",
            message_id=f"<approval.{approval.pk}.{reviewer.pk}@{settings.CCM_MESSAGE_ID_DOMAIN}>",
        )
        enqueue(SEND_TASK, mail.pk)
        mails.append(mail)
    if not mails:
        logger.warning("no reviewer with an email address can decide approval %s", approval.pk)
    return mails


def approval_mail_send_run(mail_id: int) -> bool:
    """Send one approval mail unless it went already; errors are kept and raised (retried)."""
    return internal_mail_send_once(
        ApprovalMail,
        mail_id,
        kind="approval",
        max_attempts=MAX_ATTEMPTS,
        mail=lambda mail: {"to": [mail.to], "subject": mail.subject, "text": mail.text},
    )


# --- replies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyOutcome:
    decided: bool
    detail: str
    approval: Approval | None = None


def find_token(*, subject: str, text: str) -> str | None:
    match = TOKEN_RE.search(subject) or TOKEN_RE.search(text)
    return match.group(1) if match else None


def _refuse(
    detail: str, *, sender: str, approval: Approval | None, message_id: str
) -> ReplyOutcome:
    audit.record(
        actor=None,
        action="approval.reply_ignored",
        subject=approval,
        after={"from": sender, "reason": detail, "message_id": message_id},
    )
    logger.warning("approval reply from %s ignored: %s", sender, detail)
    return ReplyOutcome(False, detail, approval)


def approval_reply_apply(
    *, token: str, sender: str, text: str, message_id: str = "", unauthenticated: str = ""
) -> ReplyOutcome:
    """Decide an approval from a mail reply, or refuse it with the reason (audited).

    `unauthenticated` says why the sender could not be authenticated ("" when it was): such
    a reply never decides.

    The token is spent only by a reply that decides: a stranger's reply, or one whose first
    word is not a decision, leaves the reviewer's token usable."""
    try:
        link = links.link_peek(token, purpose=REPLY_PURPOSE)
    except links.LinkInvalid as exc:
        return _refuse(f"token {exc.reason}", sender=sender, approval=None, message_id=message_id)
    approval = Approval.objects.filter(pk=link.subject_id).first()
    reviewer = get_user_model().objects.filter(pk=link.data.get("reviewer"), is_active=True).first()
    if approval is None or reviewer is None:
        return _refuse(
            "approval or reviewer gone", sender=sender, approval=approval, message_id=message_id
        )
    if unauthenticated:
        return _refuse(
            f"the mail failed sender authentication: {unauthenticated}",
            sender=sender,
            approval=approval,
            message_id=message_id,
        )
    # Exactly the reviewer's own address: a display name or a look-alike domain does not count.
    if not reviewer.email or sender.strip().lower() != reviewer.email.strip().lower():
        return _refuse(
            f"sent from {sender}, not from the reviewer's address",
            sender=sender,
            approval=approval,
            message_id=message_id,
        )
    match = FIRST_WORD_RE.match(text or "")
    decision = DECISIONS.get(match.group(1).lower()) if match else None
    if decision is None:
        return _refuse(
            "the first word is neither APPROVE nor REJECT",
            sender=sender,
            approval=approval,
            message_id=message_id,
        )
    first_line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    comment = f"By email reply {message_id}".strip() + (
        f": {first_line}" if decision == "reject" else ""
    )
    if approval.state != ApprovalState.PENDING:
        return _refuse(
            f"the approval is {approval.state} already",
            sender=sender,
            approval=approval,
            message_id=message_id,
        )
    try:
        with transaction.atomic():
            links.link_use(token, purpose=REPLY_PURPOSE)
            approvals.approval_decide(
                approval=approval, by=reviewer, decision=decision, comment=comment[:1000]
            )
    except links.LinkInvalid as exc:
        return _refuse(
            f"token {exc.reason}", sender=sender, approval=approval, message_id=message_id
        )
    except PermissionDenied as exc:
        return _refuse(str(exc), sender=sender, approval=approval, message_id=message_id)
    except approvals.ApprovalConflict as exc:
        return _refuse(str(exc), sender=sender, approval=approval, message_id=message_id)
    approval.refresh_from_db()
    return ReplyOutcome(True, f"{approval.state} by {reviewer.get_username()}", approval)
