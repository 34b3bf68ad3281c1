"""The mail side of the kernel's notices (ccm/notices.py): each notice with an address is sent
through the internal sender profile (kind "approval", as approval mail is), after the
transaction that wrote it commits, once; and the daily digest of what waits for each person who
opted in.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ccm import notices
from ccm.models import Notice, NoticeSettings
from ccm.tasks import Sweep, enqueue, register_schedule, register_sweep
from notifications.channels.internal import internal_mail_send_once

logger = logging.getLogger(__name__)

SEND_TASK = "notifications.channels.notices.notice_mail_send"
DIGEST_TASK = "notifications.channels.notices.digests_send"
MAIL_KIND = "approval"
MAX_ATTEMPTS = 5
# Every day at 06:00 (the cluster's time zone): before the working day starts.
DIGEST_CRON = "0 6 * * *"

UNSENT_SWEEP = Sweep(
    name="notifications.notices_unsent",
    queryset=lambda: Notice.objects.filter(sent_at__isnull=True, attempts__lt=MAX_ATTEMPTS).exclude(
        mail_to=""
    ),
    task=SEND_TASK,
    older_than=timedelta(minutes=5),
    timestamp_field="created_at",
)


def notice_created(sender, *, notice: Notice, **kwargs) -> None:
    enqueue(SEND_TASK, notice.pk)


def _mail(notice: Notice) -> dict:
    text = notice.body
    if notice.url:
        text += f"\n\nOpen it: {settings.CCM_PUBLIC_BASE_URL.rstrip('/')}{notice.url}"
    return {"to": [notice.mail_to], "subject": notice.title, "text": text + "\n"}


def notice_mail_send(notice_id: int) -> bool:
    """Send one notice's mail unless it went already; errors are kept and raised (retried)."""
    return internal_mail_send_once(
        Notice, notice_id, kind=MAIL_KIND, max_attempts=MAX_ATTEMPTS, mail=_mail
    )


def digest_text(user) -> str | None:
    """The digest for `user`: what waits for them and their unread notices; None when there
    is nothing (no mail is sent for an empty day)."""
    waiting = [w for w in notices.work_waiting(user) if w["count"]]
    unread = list(Notice.objects.filter(user=user, read_at__isnull=True)[:20])
    if not waiting and not unread:
        return None
    base = settings.CCM_PUBLIC_BASE_URL.rstrip("/")
    lines = ["What waits for you in CCM today:", ""]
    cap = notices.WORK_COUNT_CAP
    lines += [
        f"- {w['title']}: {w['count'] if w['count'] <= cap else f'more than {cap}'} "
        f"({base}{w['url']})"
        for w in waiting
    ]
    if unread:
        lines += ["", f"Unread notices ({len(unread)}):"]
        lines += [f"- {n.title}" for n in unread]
    return "\n".join(lines)


def digests_send() -> int:
    """Write today's digest notice (mailed like any notice) for each person who opted in and
    has not had one today; safe to run twice. Returns how many were written."""
    today = timezone.localdate()
    written = 0
    due = NoticeSettings.objects.filter(daily_digest=True, user__is_active=True).filter(
        Q(last_digest_on__isnull=True) | Q(last_digest_on__lt=today)
    )
    for row in due.select_related("user"):
        with transaction.atomic():
            claimed = (
                NoticeSettings.objects.filter(pk=row.pk)
                .filter(Q(last_digest_on__isnull=True) | Q(last_digest_on__lt=today))
                .update(last_digest_on=today)
            )
            if not claimed:
                continue
            text = digest_text(row.user)
            if text is None:
                continue
            notices.notice_create(
                user=row.user,
                kind="digest.daily",
                title=f"CCM daily digest, {today:%d %B %Y}",
                body=text,
            )
            written += 1
    return written


def register() -> None:
    from ccm import signals

    signals.notice_created.connect(
        notice_created, dispatch_uid="notifications.channels.notices.mail"
    )
    register_sweep(UNSENT_SWEEP)
    register_schedule("notifications.daily_digest", DIGEST_TASK, DIGEST_CRON)
