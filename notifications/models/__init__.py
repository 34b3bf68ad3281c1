"""Customers, their contact points and consent; communications and their deliveries."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django_fsm import ConcurrentTransitionMixin, FSMField, transition

from documents.models import Category, Document, Template, TemplateVersion


class Channel(models.TextChoices):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    PRINT = "print"
    PORTAL = "portal"


# Channels that leave the customer a lasting copy: what a regulatory notice must reach.
DURABLE_CHANNELS = {Channel.EMAIL, Channel.PRINT, Channel.PORTAL}


class Customer(models.Model):
    source_system = models.CharField(max_length=100, default="default")
    external_ref = models.CharField(max_length=100)
    name = models.CharField(max_length=200)
    # How letters greet the customer ("Ms Hartley"); the name when blank. Templates read it as
    # the system variable `customer.salutation`, never from request data.
    salutation = models.CharField(max_length=100, blank=True)
    language = models.CharField(max_length=10, default="en")
    # An IANA zone ("Europe/Berlin"); blank: the business's (TIME_ZONE). A campaign's send
    # window can be read in it. The database default lets bulk SQL loads leave it out.
    time_zone = models.CharField(max_length=64, blank=True, default="", db_default="")
    postal_address = models.JSONField(default=list, blank=True, help_text="Address lines")
    postal_address_valid = models.BooleanField(default=True)
    # Free-form facts integrators push (product, postcode, tags, …): what segments filter on
    # and what campaign data can be taken from. GIN-indexed on PostgreSQL (migration 0011).
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["source_system", "external_ref"], name="customer_ref_per_source"
            )
        ]
        ordering = ["name", "id"]
        indexes = [
            # The customers list reads in this order; its language filter lists the values
            # through the index (names, references and emails have trigram indexes for the
            # search, made on PostgreSQL by the migration: see ccm/lists.py).
            models.Index(fields=["name", "id"], name="customer_name_order"),
            models.Index(fields=["language"], name="customer_language"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.external_ref})"


class ContactKind(models.TextChoices):
    EMAIL = "email"
    PHONE = "phone"


class ContactPoint(models.Model):
    """An email address or a phone number (E.164) of a customer."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="contacts")
    kind = models.CharField(max_length=10, choices=ContactKind.choices)
    value = models.CharField(max_length=254)
    is_primary = models.BooleanField(default=False)
    valid = models.BooleanField(default=True)
    invalid_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "kind", "value"], name="contact_point_unique"
            )
        ]
        ordering = ["-is_primary", "id"]

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


class Preference(models.Model):
    """The customer's current wish for one category on one channel (their consent history is
    the ledger)."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="preferences")
    category = models.CharField(max_length=20, choices=Category.choices)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    allowed = models.BooleanField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "category", "channel"], name="preference_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.category}/{self.channel}: {'yes' if self.allowed else 'no'}"


class LegalBasis(models.TextChoices):
    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    LEGITIMATE_INTEREST = "legitimate_interest"


class ConsentRecord(models.Model):
    """One opt-in or opt-out, never changed: the ledger answers what applied at any moment."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="consents")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    category = models.CharField(max_length=20, choices=Category.choices)
    granted = models.BooleanField()
    legal_basis = models.CharField(max_length=30, choices=LegalBasis.choices)
    source = models.CharField(max_length=50, help_text="api, form, unsubscribe, sms_stop, …")
    recorded_at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_label = models.CharField(max_length=200, blank=True)
    evidence = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-recorded_at", "-id"]
        indexes = [models.Index(fields=["customer", "channel", "category", "recorded_at"])]

    def __str__(self) -> str:
        verb = "opt-in" if self.granted else "opt-out"
        return f"{verb} {self.category}/{self.channel} at {self.recorded_at:%Y-%m-%d %H:%M}"


class SuppressionReason(models.TextChoices):
    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    MANUAL = "manual"


class Suppression(models.Model):
    """An address nothing is sent to (except what the law requires on a durable medium is still
    routed elsewhere)."""

    channel = models.CharField(max_length=10, choices=Channel.choices)
    address = models.CharField(max_length=254)
    reason = models.CharField(max_length=20, choices=SuppressionReason.choices)
    detail = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    lifted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "address"],
                condition=Q(lifted_at__isnull=True),
                name="one_active_suppression_per_address",
            )
        ]

    def __str__(self) -> str:
        return f"{self.channel}:{self.address} ({self.reason})"


class Urgency(models.TextChoices):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class Source(models.TextChoices):
    API = "api"
    FORM = "form"
    EVENT = "event"
    CASE = "case"
    CAMPAIGN = "campaign"
    REPRINT = "reprint"
    FOLLOW_UP = "follow_up"
    INCIDENT = "incident"
    STATEMENT_RUN = "statement_run"


class CommState(models.TextChoices):
    RECEIVED = "received"
    COMPOSING = "composing"
    COMPOSED = "composed"
    COMPOSE_FAILED = "compose_failed"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    DISPATCHING = "dispatching"
    SENT = "sent"
    DELIVERED = "delivered"
    VIEWED = "viewed"
    ACTIONED = "actioned"
    UNDELIVERABLE = "undeliverable"
    CANCELLED = "cancelled"


class Communication(ConcurrentTransitionMixin, models.Model):
    """One requested message to one customer, from intake to what happened to it."""

    # What the API and integrators' URLs show instead of the counter `id`, which would tell one
    # integrator how many others' rows exist and let it walk them.
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="communications")
    # Indexed by (template, id) below, which also serves every lookup by template alone.
    template = models.ForeignKey(
        Template, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    # The four optional links are indexed only where set (Meta): most rows have none of them.
    template_version = models.ForeignKey(
        TemplateVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    data = models.JSONField()
    category = models.CharField(max_length=20, choices=Category.choices)
    urgency = models.CharField(max_length=10, choices=Urgency.choices, default=Urgency.NORMAL)
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.API)
    channel_override = models.CharField(max_length=10, choices=Channel.choices, blank=True)
    # With channel_override: send there instead of the customer's own address (a reprint to an
    # address the customer gave on the phone). Print addresses are their lines joined by " / ".
    address_override = models.CharField(max_length=500, blank=True)
    correlation_id = models.CharField(max_length=100, blank=True)
    client = models.CharField(max_length=100, help_text="Who asked: api key or user")
    # NULL, not "", when absent: the unique constraint must ignore communications without a key.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    state = FSMField(default=CommState.RECEIVED, choices=CommState.choices, protected=True)
    document = models.ForeignKey(
        Document, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    rendered = models.JSONField(default=dict, blank=True, help_text="What each channel sent")
    decision_trace = models.JSONField(default=list, blank=True)
    failure_reason = models.TextField(blank=True)
    failure_errors = models.JSONField(default=list, blank=True)
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="follow_ups",
        db_index=False,
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Read with the state (the sweeps, the queues' oldest, "stuck"): (state, updated_at) below.
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    viewed_at = models.DateTimeField(null=True, blank=True)
    actioned_at = models.DateTimeField(null=True, blank=True)
    escalated_at = models.DateTimeField(
        null=True, blank=True, help_text="When its follow-up rules ran out (escalation signalled)"
    )

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["client", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="communication_idempotency_per_client",
            )
        ]
        indexes = [
            models.Index(fields=["state", "updated_at"]),
            # The list filters by state and by template, newest first.
            models.Index(fields=["state", "id"], name="communication_state_id"),
            models.Index(fields=["template", "id"], name="communication_template_id"),
            # Plain b-tree indexes, not `db_index=True`: that adds a second, pattern-matching
            # copy for LIKE 'prefix%' that no query uses, and every write of a row pays for
            # each index of its table (the pipeline writes a communication four times).
            # Campaigns and integrators that give one; most communications have none.
            models.Index(
                fields=["correlation_id"],
                condition=~Q(correlation_id=""),
                name="communication_correlation",
            ),
            # Where set only. A communication is written four times on its way (intake,
            # claim, composed, sent), each time a new row version that every index of the
            # table gets an entry for; a partial index gets none for a row outside it. The
            # template version is set at composition, a document only where a PDF is
            # archived or reprinted, a parent for follow-ups, a creator for people's
            # requests. Lookups by one of them (`= value`, `IN`, the foreign keys' own
            # checks) imply NOT NULL, so the planner uses these as it used the full ones.
            *(
                models.Index(
                    fields=[name],
                    condition=Q(**{f"{name}__isnull": False}),
                    name=f"communication_{short}_set",
                )
                for name, short in (
                    ("template_version", "version"),
                    ("document", "document"),
                    ("parent", "parent"),
                    ("created_by", "creator"),
                )
            ),
        ]
        permissions = [("release_communication", "Can release communications for sending")]

    def __str__(self) -> str:
        return f"Communication {self.pk} ({self.template_id}, {self.state})"

    @transition(field=state, source=CommState.RECEIVED, target=CommState.COMPOSING)
    def start_composing(self) -> None:
        pass

    @transition(field=state, source=CommState.COMPOSING, target=CommState.COMPOSED)
    def composed(self) -> None:
        pass

    @transition(field=state, source=CommState.COMPOSING, target=CommState.COMPOSE_FAILED)
    def compose_failed(self, *, reason: str, errors: list) -> None:
        self.failure_reason = reason
        self.failure_errors = errors

    @transition(field=state, source=CommState.COMPOSED, target=CommState.AWAITING_APPROVAL)
    def await_approval(self) -> None:
        pass

    @transition(field=state, source=CommState.AWAITING_APPROVAL, target=CommState.APPROVED)
    def release(self) -> None:
        pass

    @transition(field=state, source=CommState.AWAITING_APPROVAL, target=CommState.REJECTED)
    def reject(self, *, reason: str) -> None:
        self.failure_reason = reason

    @transition(
        field=state,
        source=[CommState.COMPOSED, CommState.APPROVED],
        target=CommState.DISPATCHING,
    )
    def dispatch(self) -> None:
        pass

    @transition(
        field=state,
        source=[
            CommState.RECEIVED,
            CommState.COMPOSED,
            CommState.COMPOSE_FAILED,
            CommState.AWAITING_APPROVAL,
            CommState.APPROVED,
        ],
        target=CommState.CANCELLED,
    )
    def cancel(self, *, reason: str) -> None:
        self.failure_reason = reason

    # A bounce after `sent` (or an asynchronous bounce after `delivered`) that leaves no channel
    # means the customer was never reached: undeliverable is where the communication ends.
    @transition(
        field=state,
        source=[CommState.DISPATCHING, CommState.SENT, CommState.DELIVERED],
        target=CommState.UNDELIVERABLE,
    )
    def undeliverable(self, *, reason: str) -> None:
        self.failure_reason = reason

    # Recovery from an exception case (notifications/pipeline/recovery.py): corrected data is
    # composed again, against the version published now; an undeliverable one goes out once more.
    @transition(field=state, source=CommState.COMPOSE_FAILED, target=CommState.RECEIVED)
    def recompose(self, *, data: dict) -> None:
        self.data = data
        self.template_version = None
        self.failure_reason = ""
        self.failure_errors = []

    @transition(field=state, source=CommState.UNDELIVERABLE, target=CommState.DISPATCHING)
    def resend(self) -> None:
        self.failure_reason = ""

    # Forward-only progress: each target accepts every earlier state, so a late or out-of-order
    # event can move a communication forward but never back (`can_proceed` is False then).
    @transition(field=state, source=CommState.DISPATCHING, target=CommState.SENT)
    def mark_sent(self, *, when) -> None:
        self.sent_at = when

    @transition(
        field=state, source=[CommState.DISPATCHING, CommState.SENT], target=CommState.DELIVERED
    )
    def mark_delivered(self) -> None:
        pass

    @transition(
        field=state,
        source=[CommState.DISPATCHING, CommState.SENT, CommState.DELIVERED],
        target=CommState.VIEWED,
    )
    def mark_viewed(self, *, when) -> None:
        self.viewed_at = when

    @transition(
        field=state,
        source=[CommState.DISPATCHING, CommState.SENT, CommState.DELIVERED, CommState.VIEWED],
        target=CommState.ACTIONED,
    )
    def mark_actioned(self, *, when) -> None:
        self.actioned_at = when
        if self.viewed_at is None:
            self.viewed_at = when


class DeliveryState(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    FAILED = "failed"


# Forward-only order of delivery states. A bounce may arrive after "delivered" (the receiving
# server accepted, then bounced), so it outranks delivered; nothing moves a bounce back.
DELIVERY_PROGRESS = {
    DeliveryState.PENDING: 0,
    DeliveryState.SENDING: 1,
    DeliveryState.SENT: 2,
    DeliveryState.DELIVERED: 3,
    DeliveryState.BOUNCED: 4,
    DeliveryState.FAILED: 4,
}


_BEFORE_SENT = [DeliveryState.PENDING, DeliveryState.SENDING]


class Delivery(ConcurrentTransitionMixin, models.Model):
    """One attempt to reach the customer on one channel at one address.

    Its state changes only through `notifications.pipeline.transitions` (one row or a chunk); the
    transitions below are the rules that service checks."""

    communication = models.ForeignKey(
        Communication, on_delete=models.PROTECT, related_name="deliveries"
    )
    channel = models.CharField(max_length=10, choices=Channel.choices)
    address = models.CharField(max_length=254, blank=True)
    state = FSMField(
        max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING, protected=True
    )
    message_id = models.CharField(max_length=200, help_text="Our dedupe key")  # unique: Meta
    provider = models.CharField(max_length=50, blank=True)
    provider_message_id = models.CharField(max_length=200, blank=True)  # indexed: Meta
    attempts = models.PositiveSmallIntegerField(default=0)
    # How often reconciliation asked the provider about a send whose outcome was unknown.
    checks = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    meta = models.JSONField(
        default=dict, blank=True, help_text="Channel details: SMS segments, device, print batch"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["message_id"], name="delivery_message_id_unique")
        ]
        # As Communication's: no pattern-matching copies of the message id indexes.
        indexes = [
            models.Index(fields=["state", "updated_at"]),
            # Known once the provider took the message: a delivery is written twice before.
            models.Index(
                fields=["provider_message_id"],
                condition=~Q(provider_message_id=""),
                name="delivery_provider_message_id",
            ),
        ]
        verbose_name_plural = "deliveries"

    def __str__(self) -> str:
        return f"{self.channel} to {self.address} ({self.state})"

    @transition(field=state, source=DeliveryState.PENDING, target=DeliveryState.SENDING)
    def claim(self) -> None:
        """A dispatcher took it (guarded: only one can)."""

    # Back to pending: a retry later, or reconciliation found the provider never got it.
    @transition(field=state, source=DeliveryState.SENDING, target=DeliveryState.PENDING)
    def retry_later(self) -> None:
        pass

    # A provider's report may overtake the dispatcher, hence the earlier sources.
    @transition(field=state, source=_BEFORE_SENT, target=DeliveryState.SENT)
    def mark_sent(self) -> None:
        pass

    @transition(
        field=state, source=[*_BEFORE_SENT, DeliveryState.SENT], target=DeliveryState.DELIVERED
    )
    def mark_delivered(self) -> None:
        pass

    # A bounce may follow "delivered" (accepted, then bounced by the receiving server).
    @transition(
        field=state,
        source=[*_BEFORE_SENT, DeliveryState.SENT, DeliveryState.DELIVERED],
        target=DeliveryState.BOUNCED,
    )
    def bounce(self) -> None:
        pass

    @transition(
        field=state,
        source=[*_BEFORE_SENT, DeliveryState.SENT, DeliveryState.DELIVERED],
        target=DeliveryState.FAILED,
    )
    def fail(self) -> None:
        pass


class EventType(models.TextChoices):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"
    OPENED = "opened"
    CLICKED = "clicked"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"
    FAILED = "failed"


class DeliveryEvent(models.Model):
    """A provider's report about a delivery, normalised, with the raw payload kept."""

    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.PROTECT, related_name="events"
    )
    provider = models.CharField(max_length=50)
    event_id = models.CharField(max_length=200)
    event_type = models.CharField(max_length=20, choices=EventType.choices)
    hard = models.BooleanField(default=False, help_text="A permanent bounce")
    message_id = models.CharField(max_length=200, blank=True)
    recipient = models.CharField(max_length=254, blank=True)
    description = models.TextField(blank=True)
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    raw = models.JSONField(default=dict)

    class Meta:
        ordering = ["occurred_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "event_id"], name="event_once_per_provider")
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type} {self.event_id}"


from notifications.campaigns.models import (  # noqa: E402, F401
    Campaign,
    CampaignRecipient,
    CampaignState,
    RecipientState,
    Segment,
)
from notifications.customers.assets.models import Asset, AssetKind, ServicePoint  # noqa: E402, F401
from notifications.models.devices import Device, Platform, device_address  # noqa: E402, F401
from notifications.models.history import CommunicationStep  # noqa: E402, F401
from notifications.models.jobs import (  # noqa: E402, F401
    JobSource,
    JobState,
    SendJob,
    SendJobItem,
)
from notifications.models.printing import PrintBatch, PrintBatchState, PrintItem  # noqa: E402, F401
from notifications.models.throttle import ProviderBucket  # noqa: E402, F401
from notifications.models.webhooks import *  # noqa: E402, F403
from notifications.reporting.models import *  # noqa: E402, F403
from notifications.statements.models import (  # noqa: E402, F401
    CustomerTariff,
    Meter,
    Reading,
    ReadingCorrection,
    RecommendationRuleSet,
    Statement,
    StatementRun,
    Tariff,
    TariffBand,
)
