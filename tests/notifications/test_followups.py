from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.core import mail
from freezegun import freeze_time

from ccm.models import AuditEvent
from documents.bundle import BundleInvalid, validate
from notifications import signals
from notifications.models import Communication
from notifications.pipeline import followups, services
from tests.documents.factories import letter_bundle
from tests.notifications.conftest import publish

DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}
T0 = datetime(2026, 6, 1, 9, 0)


@pytest.fixture
def renewal(author, reviewer):
    rule = {"unless": "viewed", "after_days": 7, "channel": "email", "max": 2}
    bundle = letter_bundle("renewal", channels=["email"], follow_ups=[rule])
    return publish(bundle, author=author, reviewer=reviewer)


@pytest.fixture
def escalations():
    seen: list[tuple[int, str]] = []

    def receiver(sender, communication, rule, reason, **kwargs):
        seen.append((communication.pk, reason))

    signals.communication_escalated.connect(receiver, weak=False)
    yield seen
    signals.communication_escalated.disconnect(receiver)


def first_notice(customer, by, sync_tasks) -> Communication:
    with freeze_time(T0):
        communication, _ = sync_tasks(
            services.communication_request,
            template_code="renewal",
            customer=customer,
            data=DATA,
            client="test",
            by=by,
        )
    communication.refresh_from_db()
    assert communication.state == "sent"
    return communication


def apply_at(moment: datetime, sync_tasks) -> dict:
    with freeze_time(moment):
        return sync_tasks(followups.follow_ups_apply)


def test_reminders_every_n_days_then_one_escalation(
    renewal, customer, integrator, sync_tasks, escalations
):
    # given a notice sent at T0 that the customer never opens
    notice = first_notice(customer, integrator, sync_tasks)

    # then nothing happens before 7 days have passed
    assert apply_at(T0 + timedelta(days=6, hours=23), sync_tasks)["reminders"] == 0

    # when 7 days have passed, one reminder goes out, however often the task runs
    assert apply_at(T0 + timedelta(days=7), sync_tasks)["reminders"] == 1
    assert apply_at(T0 + timedelta(days=7, hours=1), sync_tasks)["reminders"] == 0
    # and the second 7 days after the first
    assert apply_at(T0 + timedelta(days=13), sync_tasks)["reminders"] == 0
    assert apply_at(T0 + timedelta(days=14), sync_tasks)["reminders"] == 1

    reminders = list(notice.follow_ups.order_by("id"))
    assert [r.state for r in reminders] == ["sent", "sent"]
    assert {r.source for r in reminders} == {"follow_up"}
    assert len(mail.outbox) == 3

    # when the reminders are used up and 7 more days pass, it escalates once
    assert apply_at(T0 + timedelta(days=21), sync_tasks)["escalated"] == 1
    assert apply_at(T0 + timedelta(days=30), sync_tasks) == {
        "reminders": 0,
        "escalated": 0,
        "failed": 0,
    }
    notice.refresh_from_db()
    assert notice.escalated_at is not None
    assert [pk for pk, _ in escalations] == [notice.pk]
    assert "not viewed after 2 reminder(s)" in escalations[0][1]
    assert notice.follow_ups.count() == 2
    assert AuditEvent.objects.filter(action="communication.follow_up_sent").count() == 2


def test_viewed_communication_gets_no_reminder(
    renewal, customer, integrator, sync_tasks, escalations
):
    notice = first_notice(customer, integrator, sync_tasks)
    Communication.objects.filter(pk=notice.pk).update(state="viewed")

    counts = apply_at(T0 + timedelta(days=40), sync_tasks)

    assert counts == {"reminders": 0, "escalated": 0, "failed": 0}
    assert escalations == []


def test_unless_actioned_reminds_a_viewed_but_not_actioned_notice(
    author, reviewer, customer, integrator, sync_tasks
):
    rule = {"unless": "actioned", "after_days": 3, "max": 1}
    publish(
        letter_bundle("renewal", channels=["email"], follow_ups=[rule]),
        author=author,
        reviewer=reviewer,
    )
    notice = first_notice(customer, integrator, sync_tasks)
    Communication.objects.filter(pk=notice.pk).update(state="viewed")

    assert apply_at(T0 + timedelta(days=3), sync_tasks)["reminders"] == 1
    reminder = notice.follow_ups.get()
    assert reminder.template.code == "renewal"
    assert reminder.parent_id == notice.pk


def test_a_bad_rule_is_refused_when_the_template_is_imported():
    bundle = letter_bundle(
        "renewal", follow_ups=[{"unless": "opened", "after_days": 0}], fallback=["fax"]
    )

    with pytest.raises(BundleInvalid) as refused:
        validate(bundle)

    message = str(refused.value)
    assert "template.json follow_ups.0.unless: 'opened' is not one of" in message
    assert "template.json follow_ups.0.after_days: 0 is less than or equal to" in message
    assert "template.json fallback.0: 'fax' is not one of" in message
