"""Events, the incidents they are grouped into, each incident's updates and the notice every
affected customer got for each update."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from notifications.models import Asset, Communication, Customer


class EventAction(models.TextChoices):
    TRIGGER = "trigger"
    UPDATE = "update"
    RESOLVE = "resolve"


class Severity(models.TextChoices):
    INFO = "info"
    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"


SEVERE = {Severity.MAJOR, Severity.CRITICAL}


class Event(models.Model):
    """One event from a device or platform, as received (kept even when it changes nothing)."""

    source = models.CharField(max_length=100)
    event_id = models.CharField(max_length=200)
    event_type = models.CharField(max_length=100)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    action = models.CharField(max_length=10, choices=EventAction.choices)
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    dedup_key = models.CharField(max_length=255, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    incident = models.ForeignKey(
        "Incident", null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "event_id"], name="event_once_per_source")
        ]
        indexes = [models.Index(fields=["incident", "asset", "occurred_at"], name="event_alarm")]
        ordering = ["occurred_at", "id"]

    def __str__(self) -> str:
        return f"{self.source}:{self.event_id}"


class IncidentState(models.TextChoices):
    DETECTED = "detected"
    NOTIFYING = "notifying"
    MONITORING = "monitoring"
    RESOLVED = "resolved"
    SUPPRESSED = "suppressed"
    FALSE_ALARM = "false_alarm"


INCIDENT_OPEN_STATES = [
    IncidentState.DETECTED,
    IncidentState.NOTIFYING,
    IncidentState.MONITORING,
    IncidentState.SUPPRESSED,
]


class IncidentKind(models.TextChoices):
    UNPLANNED = "unplanned"  # grouped from device events
    PLANNED = "planned"  # scheduled maintenance: a window, a reminder, start and completion


class Incident(ConcurrentTransitionMixin, models.Model):
    """Events of one type under one asset (the rule's grouping ancestor), told to the customers
    served under that asset once per update."""

    reference = models.CharField(max_length=20, unique=True)
    event_type = models.CharField(max_length=100)
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    dedup_key = models.CharField(max_length=255)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    state = FSMField(default=IncidentState.DETECTED, choices=IncidentState.choices, protected=True)
    title = models.CharField(max_length=200)
    held = models.BooleanField(default=False, help_text="Notices wait while an operator holds them")
    suppressed_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    kind = models.CharField(
        max_length=10, choices=IncidentKind.choices, default=IncidentKind.UNPLANNED
    )
    # Planned maintenance: the window, the work, the other assets it affects, the reminder.
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    work = models.CharField(max_length=300, blank=True)
    service = models.CharField(max_length=20, blank=True, help_text="electricity or gas")
    reminder_hours = models.PositiveSmallIntegerField(default=24)
    also_affects = models.ManyToManyField(Asset, blank=True, related_name="+")
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    first_event_at = models.DateTimeField()
    last_event_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # One open incident per grouping key: concurrent intakes cannot open two.
            models.UniqueConstraint(
                fields=["dedup_key"],
                condition=Q(state__in=INCIDENT_OPEN_STATES),
                name="incident_open_once_per_key",
            )
        ]
        ordering = ["-first_event_at", "-id"]

    def __str__(self) -> str:
        return f"{self.reference} {self.title}"

    @property
    def is_open(self) -> bool:
        return self.state in INCIDENT_OPEN_STATES

    @transition(field=state, source=IncidentState.DETECTED, target=IncidentState.NOTIFYING)
    def notify(self) -> None:
        pass

    @transition(field=state, source=IncidentState.NOTIFYING, target=IncidentState.MONITORING)
    def monitor(self) -> None:
        pass

    @transition(field=state, source=IncidentState.MONITORING, target=IncidentState.NOTIFYING)
    def renotify(self) -> None:
        pass

    @transition(field=state, source=IncidentState.DETECTED, target=IncidentState.SUPPRESSED)
    def suppress(self) -> None:
        pass

    @transition(
        field=state,
        source=[
            IncidentState.DETECTED,
            IncidentState.NOTIFYING,
            IncidentState.MONITORING,
            IncidentState.SUPPRESSED,
        ],
        target=IncidentState.RESOLVED,
    )
    def resolve(self) -> None:
        pass

    @transition(field=state, source=INCIDENT_OPEN_STATES, target=IncidentState.FALSE_ALARM)
    def mark_false_alarm(self) -> None:
        pass


class UpdateKind(models.TextChoices):
    NOTICE = "notice"
    UPDATE = "update"
    RESOLUTION = "resolution"
    RETRACTION = "retraction"
    REMINDER = "reminder"  # planned maintenance, N hours before the window
    START = "start"  # planned maintenance: the work has started


class IncidentUpdate(models.Model):
    """One thing the incident tells its customers; each customer hears it once."""

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="updates")
    sequence = models.PositiveIntegerField()
    kind = models.CharField(max_length=12, choices=UpdateKind.choices)
    message = models.JSONField(default=dict, blank=True, help_text="What the notice says")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    customers_total = models.PositiveIntegerField(default=0)
    notices_sent = models.PositiveIntegerField(default=0, help_text="Handed to the pipeline")
    notices_refused = models.PositiveIntegerField(default=0)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["incident", "sequence"], name="incident_update_seq")
        ]
        ordering = ["incident", "sequence"]

    def __str__(self) -> str:
        return f"{self.incident.reference} #{self.sequence} {self.kind}"


class IncidentNotice(models.Model):
    """What one customer got for one update: at most one, whatever re-runs."""

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="notices")
    update = models.ForeignKey(IncidentUpdate, on_delete=models.CASCADE, related_name="notices")
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    template = models.CharField(max_length=100)
    communication = models.ForeignKey(
        Communication, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    error = models.CharField(max_length=500, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["update", "customer"], name="incident_notice_once")
        ]
        indexes = [models.Index(fields=["incident", "customer"], name="incident_notice_customer")]

    def __str__(self) -> str:
        return f"{self.update} → customer {self.customer_id}"


class IncidentAlarm(models.Model):
    """The latest event (by occurred_at, then id) of one alarm of an incident: a dedup key, else
    a device. Kept as events are attached, so deciding whether the incident is over reads one row
    per alarm, not every event it ever received (an outage can gather millions)."""

    # No index beyond the unique (incident, key): every attach moves the row forward, and with
    # no indexed column changed PostgreSQL updates it in place (HOT) and prunes the old version
    # itself, so the table stays a few pages even where autovacuum lags.
    incident = models.ForeignKey(
        Incident, on_delete=models.CASCADE, related_name="alarms", db_index=False
    )
    key = models.CharField(max_length=255, help_text="The dedup key, else asset:<id>")
    occurred_at = models.DateTimeField()
    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="+", db_index=False)
    action = models.CharField(max_length=10, choices=EventAction.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["incident", "key"], name="incident_alarm_once")
        ]

    def __str__(self) -> str:
        return f"{self.incident_id} {self.key}: {self.action}"


class IncidentAlert(models.Model):
    """The internal mail (and push) telling operations of a new severe incident (an outbox
    row)."""

    incident = models.OneToOneField(Incident, on_delete=models.CASCADE, related_name="alert")
    message_id = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # The push to operations' devices: at most once (the mail is the alert that is retried).
    pushed_at = models.DateTimeField(null=True, blank=True)
    push_result = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"alert for incident {self.incident_id}"


class AppointmentStatus(models.TextChoices):
    BOOKED = "booked"
    CHANGED = "changed"
    ON_THE_WAY = "on_the_way"


class Appointment(models.Model):
    """A field-service visit to one customer, as its events last described it. Each change
    (booked, new window, technician on the way) is one revision and one notice."""

    reference = models.CharField(max_length=100, unique=True)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="+")
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=12, choices=AppointmentStatus.choices)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    purpose = models.CharField(max_length=200)
    technician = models.CharField(max_length=100, blank=True)
    revision = models.PositiveIntegerField(default=1)
    last_event_at = models.DateTimeField(help_text="occurred_at of the event applied last")
    communication = models.ForeignKey(
        Communication, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    def __str__(self) -> str:
        return f"{self.reference} ({self.status})"
