"""Incident tasks: ids in, safe to run twice."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from cases.alerts import team_recipients
from cases.incidents import services
from cases.incidents.models import IncidentAlert, IncidentUpdate
from cases.models import Team
from ccm.tasks import Sweep, register_schedule, register_sweep
from notifications.channels.internal import internal_mail_send_once, internal_push_send

ALERT_MAX_ATTEMPTS = 5


def register() -> None:
    # The tick that ends group_wait and group_interval; a crashed alert mail is sent again.
    register_schedule("cases.incidents_due", "cases.incidents.tasks.incidents_due", 1)
    # An update whose chunk tasks a crash interrupted is handed over again (from the start:
    # notices already handed over are skipped).
    register_sweep(
        Sweep(
            name="cases.incident_updates_unfinished",
            queryset=lambda: IncidentUpdate.objects.filter(completed_at__isnull=True),
            task="cases.incidents.tasks.incident_update_send",
            older_than=timedelta(minutes=15),
            timestamp_field="created_at",
        )
    )
    register_sweep(
        Sweep(
            name="cases.incident_alerts_unsent",
            queryset=lambda: IncidentAlert.objects.filter(
                sent_at__isnull=True, attempts__lt=ALERT_MAX_ATTEMPTS
            ),
            task="cases.incidents.tasks.incident_alert_send",
            older_than=timedelta(minutes=5),
            timestamp_field="created_at",
        )
    )


def incidents_due() -> int:
    return services.incidents_due_run()


def incident_evaluate(incident_id: int) -> str:
    return services.incident_evaluate(incident_id=incident_id)


def incident_update_send(update_id: int, after: int = 0) -> dict[str, int]:
    return services.incident_update_send(update_id=update_id, after=after)


def _incident_url(incident) -> str:
    return settings.CCM_PUBLIC_BASE_URL.rstrip("/") + reverse(
        "incident-detail", args=[incident.reference]
    )


def _alert_mail(alert: IncidentAlert) -> dict:
    incident = alert.incident
    url = _incident_url(incident)
    return {
        "to": team_recipients(Team.OPERATIONS),
        "subject": f"[{incident.severity}] New incident {incident.reference}: {incident.title}",
        "text": (
            f"{incident.title}\nSeverity: {incident.severity}\nAsset: {incident.asset.code}\n"
            f"First event: {incident.first_event_at.isoformat()}\n\n{url}\n"
        ),
    }


def incident_alert_send(alert_id: int) -> bool:
    """Tell operations of a new severe incident by the internal mail channel, once."""
    return internal_mail_send_once(
        IncidentAlert,
        alert_id,
        kind="incident_alert",
        max_attempts=ALERT_MAX_ATTEMPTS,
        mail=_alert_mail,
    )


def incident_alert_push(alert_id: int) -> dict[str, int]:
    """Push the alert to the operations team's registered devices, once: the row is claimed
    before sending, so a second delivery of the task (or a crash half way) sends no repeat."""
    claimed = IncidentAlert.objects.filter(pk=alert_id, pushed_at__isnull=True).update(
        pushed_at=timezone.now()
    )
    if not claimed:
        return {}
    alert = IncidentAlert.objects.select_related("incident__asset").get(pk=alert_id)
    incident = alert.incident
    counts = internal_push_send(
        title=f"[{incident.severity}] New incident {incident.reference}"[:100],
        body=f"{incident.title} (asset {incident.asset.code})",
        data={"incident": incident.reference, "link": _incident_url(incident)},
    )
    IncidentAlert.objects.filter(pk=alert_id).update(
        push_result=f"sent {counts['sent']}, failed {counts['failed']}"
    )
    return counts
