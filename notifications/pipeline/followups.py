"""Follow-up rules: remind a customer who has not looked (or not acted), then escalate.

A template declares its rules in `template.json`:

    "follow_ups": [
        {"unless": "actioned", "after_days": 7, "template": "policy_renewal",
         "channel": "sms", "max": 2}
    ]

If a communication made from that template is not viewed (`"unless": "viewed"`) or not actioned
(`"unless": "actioned"`) `after_days` days after it was sent, the periodic task sends a reminder
with `template` (default: the same one) on `channel` (default: channel selection decides), at
most `max` times, `after_days` apart. When the reminders are used up and the days have passed
again, it raises `communication_escalated` once. A reminder is itself a communication, linked to
the first by `parent`, made with the first one's data; its idempotency key makes the task safe
to run twice, or on two workers at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from ccm import audit
from documents.composition import CompositionError
from documents.models import TemplateVersion
from notifications import signals
from notifications.errors import IntakeError
from notifications.models import CommState, Communication, Source
from notifications.pipeline import services

logger = logging.getLogger(__name__)

FOLLOW_UP_CLIENT = "ccm.follow_ups"
NOT_YET = {
    "viewed": [CommState.SENT, CommState.DELIVERED],
    "actioned": [CommState.SENT, CommState.DELIVERED, CommState.VIEWED],
}


@dataclass(frozen=True)
class Rule:
    index: int
    unless: str
    after: timedelta
    template: str
    channel: str
    max: int

    @classmethod
    def parse(cls, index: int, raw: dict, *, default_template: str) -> Rule:
        unless = raw.get("unless", "viewed")
        if unless not in NOT_YET:
            raise ValueError(f"follow_ups[{index}].unless must be 'viewed' or 'actioned'")
        return cls(
            index=index,
            unless=unless,
            after=timedelta(days=float(raw["after_days"])),
            template=raw.get("template") or default_template,
            channel=raw.get("channel", ""),
            max=int(raw.get("max", 1)),
        )


def rules_for(version: TemplateVersion) -> list[Rule]:
    code = version.template.code
    return [
        Rule.parse(i, raw, default_template=code)
        for i, raw in enumerate(version.meta.get("follow_ups") or [])
    ]


def follow_ups_apply(*, now: datetime | None = None) -> dict[str, int]:
    """Send the reminders that are due and escalate what ran out of reminders."""
    now = now or timezone.now()
    counts = {"reminders": 0, "escalated": 0, "failed": 0}
    versions = TemplateVersion.objects.filter(content__meta__has_key="follow_ups").select_related(
        "template"
    )
    for version in versions:
        try:
            rules = rules_for(version)
        except (KeyError, TypeError, ValueError) as exc:
            logger.error("template version %s has a bad follow-up rule: %s", version.pk, exc)
            continue
        for rule in rules:
            due = Communication.objects.filter(
                template_version=version,
                state__in=NOT_YET[rule.unless],
                escalated_at__isnull=True,
                sent_at__lte=now - rule.after,
            )
            # A reminder made from the same template does not start reminders of its own.
            due = due.exclude(source=Source.FOLLOW_UP).select_related("customer")
            for communication in due.iterator():
                outcome = _follow_up(communication, rule, now)
                if outcome:
                    counts[outcome] += 1
    return counts


def _key(communication: Communication, rule: Rule, number: int) -> str:
    return f"follow-up:{communication.pk}:{rule.index}:{number}"


def _follow_up(communication: Communication, rule: Rule, now: datetime) -> str | None:
    reminders = list(
        Communication.objects.filter(
            parent=communication,
            client=FOLLOW_UP_CLIENT,
            idempotency_key__startswith=f"follow-up:{communication.pk}:{rule.index}:",
        ).values_list("created_at", flat=True)
    )
    last = max(reminders, default=communication.sent_at)
    assert last is not None  # only sent communications are due
    if now < last + rule.after:
        return None
    if len(reminders) >= rule.max:
        return _escalate(communication, rule, now)
    number = len(reminders) + 1
    try:
        reminder, created = services.communication_request(
            template_code=rule.template,
            customer=communication.customer,
            data=communication.data,
            client=FOLLOW_UP_CLIENT,
            by=None,
            idempotency_key=_key(communication, rule, number),
            source=Source.FOLLOW_UP,
            channel_override=rule.channel,
            correlation_id=communication.correlation_id,
            parent=communication,
        )
    except (IntakeError, CompositionError) as exc:
        audit.record(
            actor=None,
            action="communication.follow_up_failed",
            subject=communication,
            after={"rule": rule.index, "template": rule.template, "reason": str(exc)},
        )
        return "failed"
    if not created:
        return None
    audit.record(
        actor=None,
        action="communication.follow_up_sent",
        subject=communication,
        after={
            "rule": rule.index,
            "reminder": reminder.pk,
            "number": number,
            "unless": rule.unless,
            "template": rule.template,
            "channel": rule.channel,
        },
    )
    return "reminders"


def _escalate(communication: Communication, rule: Rule, now: datetime) -> str | None:
    reason = (
        f"not {rule.unless} after {rule.max} reminder(s); "
        f"first sent {communication.sent_at:%Y-%m-%d %H:%M}"
    )
    with transaction.atomic():
        claimed = Communication.objects.filter(
            pk=communication.pk, escalated_at__isnull=True
        ).update(escalated_at=now)
        if not claimed:
            return None
        audit.record(
            actor=None,
            action="communication.escalated",
            subject=communication,
            after={"rule": rule.index, "reason": reason},
        )
        communication.escalated_at = now
        transaction.on_commit(
            lambda: signals.communication_escalated.send(
                sender=Communication,
                communication=communication,
                rule={"unless": rule.unless, "template": rule.template, "max": rule.max},
                reason=reason,
            )
        )
    return "escalated"
