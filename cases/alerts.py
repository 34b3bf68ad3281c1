"""Internal alert mails about cases (an exception opened, a deadline approaching or missed).

An alert is written as a `CaseAlert` row in the transaction that decided it — so a rollback
sends nothing and a crash loses nothing — and sent after commit by `case_alert_send_run`
through the sender profile's internal-mail channel (the Gmail gateway by default). Its key makes
it once per event; its Message-ID lets the gateway spot a copy that already went out.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from cases import sla
from cases.models import Case, CaseAlert, Milestone, SlaStatus, Team
from ccm.roles import Role
from ccm.tasks import Sweep, enqueue
from documents import selectors as document_selectors
from documents import services as documents
from documents.composition import CompositionError
from notifications.channels.internal import internal_mail_send_once

logger = logging.getLogger(__name__)

SEND_TASK = "cases.tasks.case_alert_send"
MAX_ATTEMPTS = 5
EXCEPTION_TEMPLATE = "exception_alert"
# Who works each team's queue, when CASES_ALERT_RECIPIENTS does not name its addresses.
TEAM_ROLES: dict[str, str] = {
    Team.CUSTOMER_RELATIONS: Role.SERVICE_AGENT,
    Team.DISPUTES: Role.SERVICE_AGENT,
    Team.OPERATIONS: Role.OPERATIONS,
}

UNSENT_SWEEP = Sweep(
    name="cases.alerts_unsent",
    queryset=lambda: CaseAlert.objects.filter(sent_at__isnull=True, attempts__lt=MAX_ATTEMPTS),
    task=SEND_TASK,
    older_than=timedelta(minutes=5),
    timestamp_field="created_at",
)


def team_recipients(team: str) -> list[str]:
    configured = settings.CASES_ALERT_RECIPIENTS.get(team, "")
    if configured:
        return [address.strip() for address in configured.split(";") if address.strip()]
    users = get_user_model().objects.filter(is_active=True, groups__name=TEAM_ROLES.get(team))
    return sorted(set(users.exclude(email="").values_list("email", flat=True)))


def case_url(case: Case) -> str:
    return settings.CCM_PUBLIC_BASE_URL.rstrip("/") + reverse(
        "admin:cases_case_change", args=[case.pk]
    )


def _queue(*, case: Case, key: str, subject: str, text: str, html: str = "") -> CaseAlert | None:
    recipients = team_recipients(case.team)
    if case.assignee is not None and case.assignee.email:
        recipients = sorted({*recipients, case.assignee.email})
    if not recipients:
        logger.warning("no one to alert about %s (team %s): %s", case.reference, case.team, key)
        return None
    alert, created = CaseAlert.objects.get_or_create(
        key=key,
        defaults={
            "case": case,
            "recipients": recipients,
            "subject": subject[:300],
            "text": text,
            "html": html,
            "message_id": f"<case-alert.{key.replace(':', '.')}@{settings.CCM_MESSAGE_ID_DOMAIN}>",
        },
    )
    if created:
        enqueue(SEND_TASK, alert.pk)
    return alert


def _rendered(code: str, data: dict) -> dict | None:
    """The email rendition of a published library template, or None (then the alert goes out
    as plain text: an alert is never lost because its template is missing or out of step)."""
    version = document_selectors.version_for_sending(code=code)
    if version is None:
        return None
    try:
        return documents.template_preview(version=version, data=data, channels=["email"]).email
    except CompositionError as exc:
        logger.warning("alert template %s failed (%s); sending plain text", code, exc.reason)
        return None


def exception_alert_queue(case: Case) -> CaseAlert | None:
    """Tell operations an exception case was opened, with the field errors and next action."""
    details = case.error_details
    field_errors = [
        {"field": e.get("field") or "(data)", "message": e.get("message") or "invalid"}
        for e in details.get("errors", [])
    ]
    data: dict[str, Any] = {
        "case_reference": case.reference,
        "customer_reference": case.customer.external_ref if case.customer else "n/a",
        "document_type": case.details.get("template") or "n/a",
        "error_summary": details.get("reason") or case.get_exception_kind_display(),
        "field_errors": field_errors,
        "next_action": case.next_action or "Open the case.",
        "case_url": case_url(case),
        "occurred_at": (case.last_occurred_at or timezone.now()).isoformat(),
        "severity": "critical" if case.priority == "urgent" else "high",
        "queue": case.get_team_display(),
        "stage": details.get("stage") or "delivery",
    }
    rendered = _rendered(EXCEPTION_TEMPLATE, data)
    if rendered is None:
        errors = "".join(f"\n  - {e['field']}: {e['message']}" for e in field_errors)
        rendered = {
            "subject": f"[CCM] {case.reference} - {data['document_type']} for "
            f"{data['customer_reference']}: action needed",
            "text": f"{case.subject}\n\nWhat happened: {data['error_summary']}{errors}\n\n"
            f"Next action: {data['next_action']}\n\nOpen the case: {data['case_url']}\n",
            "html": "",
        }
    return _queue(
        case=case,
        key=f"{case.reference}:opened",
        subject=rendered["subject"],
        text=rendered["text"],
        html=rendered["html"],
    )


def escalation_alert_queue(*, case: Case, milestone: Milestone, status: str) -> CaseAlert | None:
    calendar = sla.calendar_for(sla.spec_for(case.case_type))
    due = milestone.due_at.astimezone(calendar.tz)
    late = status == SlaStatus.OVERDUE
    headline = "is overdue" if late else "is due soon"
    lines = [
        f"{case.reference}: {milestone.label} {headline} (due {due:%a %d %b %Y}).",
        "",
        f"Case:      {case.reference} - {case.subject}",
        f"Type:      {case.get_case_type_display()}",
        f"Customer:  {case.customer.external_ref if case.customer else 'n/a'}",
        f"Assignee:  {case.assignee.get_username() if case.assignee else 'unassigned'}",
        f"Priority:  {case.get_priority_display()} (raised)",
        f"Milestone: {milestone.label}, due {due:%Y-%m-%d %H:%M %Z}",
        "",
        f"Open the case: {case_url(case)}",
    ]
    return _queue(
        case=case,
        key=f"{case.reference}:{milestone.code}:{status}",
        subject=f"[CCM {'OVERDUE' if late else 'DUE SOON'}] {case.reference} "
        f"{milestone.label} {headline}",
        text="\n".join(lines) + "\n",
    )


def case_alert_send_run(alert_id: int) -> bool:
    """Send one alert unless it went already; a failure is kept on the row and raised, so the
    task queue retries it (and the sweep, up to MAX_ATTEMPTS)."""
    return internal_mail_send_once(
        CaseAlert,
        alert_id,
        kind="internal_alert",
        max_attempts=MAX_ATTEMPTS,
        mail=lambda alert: {
            "to": alert.recipients,
            "subject": alert.subject,
            "text": alert.text,
            "html": alert.html,
        },
    )
