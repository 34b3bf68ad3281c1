"""Work that finds its people: in-app notices (with their mail), what waits for each person,
and the daily digest.

A notice is written in the transaction of what caused it (a reviewer's decision); when the
person has an address, `ccm.signals.notice_created` tells the notifications app, which sends
the mail through the internal sender profile after commit (notifications/channels/notices.py). The
kernel knows nothing of mail itself, as the layers require.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from ccm import signals
from ccm.lists import capped_count, capped_counts
from ccm.models import Approval, ApprovalState, Notice, NoticeSettings

PAGE_SIZE = 50
# Navigation badges count up to here and then say "99+": a count that reads at most this many
# index entries costs the same with a hundred or a hundred thousand open cases.
WORK_COUNT_CAP = 99
# work_summary's key for the unread notices among the kinds of work.
_UNREAD = "_unread"


@transaction.atomic
def notice_create(*, user, kind: str, title: str, body: str = "", url: str = "") -> Notice:
    """Tell `user` something in the app, and by mail when they have an address."""
    notice = Notice.objects.create(
        user=user,
        kind=kind,
        title=title[:300],
        body=body,
        url=url[:500],
        mail_to=(getattr(user, "email", "") or "").strip(),
    )
    if notice.mail_to:
        notice.message_id = f"<notice.{notice.pk}@{settings.CCM_MESSAGE_ID_DOMAIN}>"
        notice.save(update_fields=["message_id"])
        signals.notice_created.send(sender=Notice, notice=notice)
    return notice


def notices_mark_read(*, user, ids: list[int] | None = None) -> int:
    """Mark `user`'s notices read (those of `ids`, or all); returns how many changed."""
    qs = Notice.objects.filter(user=user, read_at__isnull=True)
    if ids is not None:
        qs = qs.filter(pk__in=ids)
    return qs.update(read_at=timezone.now())


def _unread(user) -> QuerySet[Notice]:
    return Notice.objects.filter(user=user, read_at__isnull=True)


def unread_count(user) -> int:
    """Unread notices, counted up to WORK_COUNT_CAP + 1."""
    return capped_count(_unread(user), WORK_COUNT_CAP)


def digest_set(*, user, daily: bool) -> NoticeSettings:
    row, _ = NoticeSettings.objects.update_or_create(user=user, defaults={"daily_digest": daily})
    return row


def digest_wanted(user) -> bool:
    return NoticeSettings.objects.filter(user=user, daily_digest=True).exists()


# --- what waits for me -----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkCount:
    """One kind of work that waits for a person, counted for the navigation and the digest.
    `waiting(user)` is the queryset of that work; every kind is counted in one statement up
    to WORK_COUNT_CAP + 1 (`ccm.lists.capped_counts`), so each must be answered from an
    index: more than the cap is shown as "99+"."""

    key: str
    title: str
    url_name: str
    permission: str
    waiting: Callable[[object], QuerySet]


_work: dict[str, WorkCount] = {}


def register_work_count(item: WorkCount) -> None:
    """Apps add theirs in AppConfig.ready()."""
    _work[item.key] = item


def work_waiting(user) -> list[dict]:
    """What waits for `user`, of the kinds their roles may open: title, url and count."""
    return work_summary(user)[0]


def work_summary(user) -> tuple[list[dict], int]:
    """`work_waiting(user)` and the user's unread notices, counted in one statement (every
    page's navigation shows them: one round trip rather than one a kind)."""
    shown = []
    for item in _work.values():
        if not user.has_perm(item.permission):
            continue
        try:
            shown.append((item, reverse(item.url_name)))
        except NoReverseMatch:
            continue
    querysets = {item.key: item.waiting(user) for item, _ in shown}
    counts = capped_counts({**querysets, _UNREAD: _unread(user)}, WORK_COUNT_CAP)
    rows = [
        {"key": item.key, "title": item.title, "url": url, "count": counts[item.key]}
        for item, url in shown
    ]
    return rows, counts[_UNREAD]


def _approvals_waiting(user, *, releases: bool) -> QuerySet[Approval]:
    from ccm import approvals

    kinds = [k.kind for k in approvals.kinds() if k.release == releases]
    if not kinds:
        return Approval.objects.none()
    match = Q()
    for kind in kinds:
        app_label, _, model = kind.partition(".")
        match |= Q(subject_type__app_label=app_label, subject_type__model=model)
    return (
        Approval.objects.filter(state=ApprovalState.PENDING)
        .exclude(requested_by=user)
        .exclude(author=user)
        .filter(match)
    )


register_work_count(
    WorkCount(
        "signoffs",
        "Sign-offs",
        "review-queue",
        "ccm.decide_approval",
        lambda user: _approvals_waiting(user, releases=False),
    )
)
register_work_count(
    WorkCount(
        "releases",
        "Releases",
        "review-queue",
        "ccm.decide_approval",
        lambda user: _approvals_waiting(user, releases=True),
    )
)
