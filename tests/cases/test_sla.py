"""SLA clocks: deadlines on England's business-day calendar, stopping the clock while waiting on
the customer, and the periodic sweep that flags and escalates cases near or past a deadline."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from django.core import mail
from freezegun import freeze_time

from cases import services, sla, tasks
from cases.models import Case, CaseAlert
from ccm.models import AuditEvent
from tests.cases.conftest import COMPLAINT_DETAILS

LONDON = ZoneInfo("Europe/London")


def due_dates(case: Case) -> dict[str, date]:
    return {m.code: m.due_at.astimezone(LONDON).date() for m in case.milestones.all()}


def open_complaint(customer, agent, **kwargs) -> Case:
    return services.case_open(
        case_type="complaint",
        subject="Claim settled late",
        customer=customer,
        details=COMPLAINT_DETAILS,
        by=agent,
        **kwargs,
    )


def test_business_days_skip_weekends_and_english_bank_holidays():
    calendar = sla.Calendar(code="GB-ENG", tz=LONDON)
    # Maundy Thursday + 1 business day: Good Friday, the weekend and Easter Monday are off.
    assert calendar.add_business_days(date(2026, 4, 2), 1) == date(2026, 4, 7)
    assert calendar.business_days_between(date(2026, 4, 2), date(2026, 4, 7)) == 1
    # Scotland keeps Easter Monday as a working day.
    assert sla.Calendar(code="GB-SCT", tz=LONDON).add_business_days(date(2026, 4, 2), 1) == date(
        2026, 4, 6
    )


@freeze_time("2026-05-01 09:00:00")  # Friday; Monday 4 May is the Early May bank holiday
def test_complaint_received_friday_before_a_bank_holiday_is_acknowledged_by_wednesday(
    customer, agent
):
    # when
    case = open_complaint(customer, agent)
    # then: two business days are Tuesday and Wednesday; the final response is due 8 weeks on
    assert case.reference == "CMP-2026-000001"
    assert due_dates(case) == {
        "acknowledgement": date(2026, 5, 6),
        "interim_update": date(2026, 5, 29),
        "final_response": date(2026, 6, 26),
    }
    acknowledgement = case.milestones.get(code="acknowledgement")
    assert acknowledgement.due_at == datetime(2026, 5, 6, 23, 59, 59, 999999, tzinfo=LONDON)
    assert case.next_due_at == acknowledgement.due_at
    opened = AuditEvent.objects.get(action="case.opened")
    assert opened.after["deadlines"]["acknowledgement"].startswith("2026-05-06T23:59:59")


def test_waiting_on_the_customer_extends_deadlines_by_the_paused_business_days(customer, agent):
    # given a complaint received on Monday 1 June 2026, worked at once
    with freeze_time("2026-06-01 09:00:00"):
        case = open_complaint(customer, agent, assignee=agent)
        case = services.case_start(case=case, by=agent)
    assert due_dates(case)["acknowledgement"] == date(2026, 6, 3)
    # when it waits on the customer from Tuesday to Friday
    with freeze_time("2026-06-02 10:00:00"):
        case = services.case_wait(case=case, by=agent, reason="Asked for photos of the damage")
    with freeze_time("2026-06-05 10:00:00"):
        case = services.case_resume(case=case, by=agent)
    # then Wednesday, Thursday and Friday were paused: every open deadline moves by three
    assert case.state == "in_progress"
    assert case.paused_business_days == 3
    assert due_dates(case) == {
        "acknowledgement": date(2026, 6, 8),
        "interim_update": date(2026, 7, 2),
        "final_response": date(2026, 7, 30),
    }
    extended = AuditEvent.objects.get(action="case.deadlines_extended")
    assert extended.after["paused_business_days"] == 3
    assert extended.after["deadlines"]["acknowledgement"].startswith("2026-06-08")


def test_a_pause_over_a_bank_holiday_weekend_costs_one_business_day(customer, agent):
    with freeze_time("2026-05-20 09:00:00"):
        case = services.case_start(case=open_complaint(customer, agent, assignee=agent), by=agent)
    with freeze_time("2026-05-22 16:00:00"):  # Friday before the Spring bank holiday
        case = services.case_wait(case=case, by=agent, reason="Waiting for the adjuster")
    with freeze_time("2026-05-26 09:00:00"):  # Tuesday
        case = services.case_resume(case=case, by=agent)
    assert case.paused_business_days == 1


def test_sweep_flags_and_escalates_an_approaching_then_an_overdue_case_once_each(
    customer, agent, sync_tasks
):
    # given a complaint received on the Friday before the May bank holiday
    with freeze_time("2026-05-01 09:00:00"):
        case = open_complaint(customer, agent, assignee=agent)
    # when the sweep runs the same afternoon: Tuesday and Wednesday are left, on track
    with freeze_time("2026-05-01 15:00:00"):
        sync_tasks(tasks.case_sla_sweep)
    case.refresh_from_db()
    assert (case.sla_status, case.priority) == ("on_track", "normal")
    assert mail.outbox == []
    # when it runs on Tuesday, one business day before the acknowledgement is due (twice)
    with freeze_time("2026-05-05 09:00:00"):
        sync_tasks(tasks.case_sla_sweep)
        sync_tasks(tasks.case_sla_sweep)
    # then it is flagged, escalated once (audited, priority raised) and the team alerted once
    case.refresh_from_db()
    assert (case.sla_status, case.priority) == ("approaching", "high")
    escalations = AuditEvent.objects.filter(action="case.escalated", subject_id=str(case.pk))
    assert [e.after["sla_status"] for e in escalations] == ["approaching"]
    assert [m.to for m in mail.outbox] == [["agnes@northwind.example"]]
    assert mail.outbox[0].subject.startswith(f"[CCM DUE SOON] {case.reference} Acknowledgement")
    assert mail.outbox[0].from_email == "ccm-alerts@northwind.example"  # the Gmail route
    # when Thursday comes and the acknowledgement has still not gone out
    with freeze_time("2026-05-07 09:00:00"):
        sync_tasks(tasks.case_sla_sweep)
    # then it is overdue, escalated again to the top priority
    case.refresh_from_db()
    assert (case.sla_status, case.priority) == ("overdue", "urgent")
    assert mail.outbox[-1].subject.startswith(f"[CCM OVERDUE] {case.reference}")
    assert len(mail.outbox) == 2
    assert CaseAlert.objects.filter(case=case, sent_at__isnull=False).count() == 2


def test_a_case_waiting_on_the_customer_is_not_escalated(customer, agent, sync_tasks):
    with freeze_time("2026-05-01 09:00:00"):
        case = services.case_start(case=open_complaint(customer, agent, assignee=agent), by=agent)
        case = services.case_wait(case=case, by=agent, reason="Asked for the policy schedule")
    with freeze_time("2026-05-07 09:00:00"):
        sync_tasks(tasks.case_sla_sweep)
    case.refresh_from_db()
    assert (case.state, case.sla_status, case.priority) == ("waiting", "on_track", "normal")
    assert not AuditEvent.objects.filter(action="case.escalated").exists()


@pytest.mark.parametrize(
    ("now", "status"),
    [
        ("2026-05-01 15:00:00", "on_track"),
        ("2026-05-05 09:00:00", "approaching"),
        ("2026-05-06 22:00:00", "approaching"),  # 23:00 in London, still the due day
        ("2026-05-06 23:30:00", "overdue"),  # 00:30 on Thursday in London
    ],
)
def test_sla_status_against_the_acknowledgement_deadline(now, status):
    spec = sla.spec_for("complaint")
    due = sla.due_at(
        spec,
        spec.milestones[0],
        received_at=datetime(2026, 5, 1, 9, tzinfo=ZoneInfo("UTC")),
    )
    assert sla.sla_status(spec, due=due, now=datetime.fromisoformat(now + "+00:00")) == status
