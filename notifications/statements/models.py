"""Meters and their readings, tariffs, recommendation rules and statement runs.

A meter belongs to a service point (the asset tree's leaf where a customer is supplied). Interval
readings hold the consumption of one interval starting at `start`; register reads hold the
meter's index at `start`. A reading is unique per meter and start: a second reading for the same
interval with another value replaces it and the earlier one is kept as a `ReadingCorrection`."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django_fsm import ConcurrentTransitionMixin, FSMField, transition


class Unit(models.TextChoices):
    KWH = "kWh"
    M3 = "m3", "m³"


class MeterKind(models.TextChoices):
    INTERVAL = "interval", "interval (consumption per interval)"
    REGISTER = "register", "register (cumulative index)"


class Meter(models.Model):
    serial = models.CharField(max_length=64, unique=True)
    service_point = models.ForeignKey(
        "notifications.ServicePoint", on_delete=models.PROTECT, related_name="meters"
    )
    unit = models.CharField(max_length=8, choices=Unit.choices, default=Unit.KWH)
    kind = models.CharField(max_length=10, choices=MeterKind.choices, default=MeterKind.INTERVAL)
    # 30 for half-hourly, 1440 for daily; register reads are at whatever time they were taken.
    interval_minutes = models.PositiveIntegerField(default=30)
    # A register with this many digits rolls over to 0 after 10**digits - 1.
    register_digits = models.PositiveSmallIntegerField(default=6)
    # Consumption above this in one interval is physically impossible for the supply.
    max_interval_value = models.DecimalField(max_digits=12, decimal_places=3, default=Decimal(50))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["serial"]

    def __str__(self) -> str:
        return self.serial


class Quality(models.TextChoices):
    ACTUAL = "actual"
    ESTIMATED = "estimated"
    CUSTOMER = "customer", "customer-read"
    MISSING = "missing"


class Reading(models.Model):
    # No index of its own: the unique (meter, start) index serves every lookup by meter, and one
    # index fewer to maintain is a fifth of an intake's insert cost.
    meter = models.ForeignKey(
        Meter, on_delete=models.CASCADE, related_name="readings", db_index=False
    )
    start = models.DateTimeField()
    value = models.DecimalField(max_digits=14, decimal_places=3, null=True)
    quality = models.CharField(max_length=10, choices=Quality.choices, default=Quality.ACTUAL)
    received_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["meter", "start"], name="reading_meter_start_unique")
        ]

    def __str__(self) -> str:
        return f"{self.meter_id} {self.start:%Y-%m-%d %H:%M} {self.value} ({self.quality})"


class ReadingCorrection(models.Model):
    """The value a later reading replaced: kept for audit, never used for billing."""

    reading = models.ForeignKey(Reading, on_delete=models.CASCADE, related_name="corrections")
    value = models.DecimalField(max_digits=14, decimal_places=3, null=True)
    quality = models.CharField(max_length=10, choices=Quality.choices)
    received_at = models.DateTimeField()
    replaced_at = models.DateTimeField()

    class Meta:
        ordering = ["reading", "replaced_at"]

    def __str__(self) -> str:
        return f"{self.value} ({self.quality}) replaced at {self.replaced_at:%Y-%m-%d %H:%M}"


class VatRounding(models.TextChoices):
    LINE = "line", "VAT rounded on each line, summed"
    TOTAL = "total", "VAT rounded once on the net total"


class Tariff(models.Model):
    """Unit rates by band, a daily standing charge and VAT, valid over [valid_from, valid_to)."""

    code = models.CharField(max_length=50, unique=True)
    name = models.CharField(max_length=200)
    currency = models.CharField(max_length=3, default="GBP")
    standing_charge = models.DecimalField(
        max_digits=10, decimal_places=4, help_text="Per day, before VAT"
    )
    vat_rate = models.DecimalField(max_digits=5, decimal_places=4, help_text="0.05 for 5 %")
    vat_rounding = models.CharField(
        max_length=10, choices=VatRounding.choices, default=VatRounding.LINE
    )
    valid_from = models.DateField()
    valid_to = models.DateField(null=True, blank=True)

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class TariffBand(models.Model):
    """A unit rate for the intervals starting in [start_time, end_time) local time. A band whose
    end is before its start runs across midnight (23:00-07:00); 00:00-00:00 is all day."""

    tariff = models.ForeignKey(Tariff, on_delete=models.CASCADE, related_name="bands")
    name = models.CharField(max_length=50)
    start_time = models.TimeField()
    end_time = models.TimeField()
    unit_rate = models.DecimalField(max_digits=10, decimal_places=5, help_text="Per unit")

    class Meta:
        ordering = ["tariff", "start_time"]
        constraints = [
            models.UniqueConstraint(fields=["tariff", "name"], name="tariff_band_name_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.start_time:%H:%M}-{self.end_time:%H:%M} @ {self.unit_rate}"


class CustomerTariff(models.Model):
    """A customer's tariff history: one row per tariff from `valid_from` until the next row.
    A row with a `meter` is that meter's own history (a gas meter beside electricity); the
    rows without one apply to every meter of the customer that has no history of its own."""

    customer = models.ForeignKey(
        "notifications.Customer", on_delete=models.CASCADE, related_name="tariffs"
    )
    meter = models.ForeignKey(
        Meter,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="tariffs",
        help_text="Only this meter; empty: the customer's meters without a tariff of their own",
    )
    tariff = models.ForeignKey(Tariff, on_delete=models.PROTECT, related_name="+")
    valid_from = models.DateField()

    class Meta:
        ordering = ["customer", "valid_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "valid_from"],
                condition=models.Q(meter__isnull=True),
                name="customer_tariff_from_unique",
            ),
            models.UniqueConstraint(
                fields=["meter", "valid_from"],
                condition=models.Q(meter__isnull=False),
                name="meter_tariff_from_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tariff_id} from {self.valid_from}"


class RuleSetState(models.TextChoices):
    DRAFT = "draft"
    IN_REVIEW = "in_review"
    PUBLISHED = "published"
    RETIRED = "retired"


class RecommendationRuleSet(ConcurrentTransitionMixin, models.Model):
    """The recommendation rules as data, versioned and signed off like a template: a version is
    frozen from review on; publishing one retires the previous. See `recommendations.py`."""

    version = models.PositiveIntegerField(unique=True)
    rules = models.JSONField(default=list)
    state = FSMField(default=RuleSetState.DRAFT, choices=RuleSetState.choices, protected=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"Recommendation rules v{self.version} ({self.state})"

    @transition(field=state, source=RuleSetState.DRAFT, target=RuleSetState.IN_REVIEW)
    def submit(self) -> None:
        pass

    @transition(field=state, source=RuleSetState.IN_REVIEW, target=RuleSetState.DRAFT)
    def send_back(self) -> None:
        pass

    @transition(field=state, source=RuleSetState.IN_REVIEW, target=RuleSetState.PUBLISHED)
    def publish(self, *, when) -> None:
        self.published_at = when

    @transition(field=state, source=RuleSetState.PUBLISHED, target=RuleSetState.RETIRED)
    def retire(self) -> None:
        pass


class RunState(models.TextChoices):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class StatementRun(ConcurrentTransitionMixin, models.Model):
    """One bill run: a period and a set of customers (a segment, or all with readings)."""

    period_start = models.DateField()
    period_end = models.DateField(help_text="Inclusive")
    segment = models.ForeignKey(
        "notifications.Segment", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    template_code = models.CharField(max_length=100, default="usage_statement")
    state = FSMField(default=RunState.CREATED, choices=RunState.choices, protected=True)
    note = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    last_chunk_at = models.DateTimeField(null=True, blank=True)
    # How many customers the run covers, counted when it starts.
    customer_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Statement run {self.pk} {self.period_start}-{self.period_end} ({self.state})"

    @transition(field=state, source=RunState.CREATED, target=RunState.RUNNING)
    def start(self, *, when) -> None:
        self.started_at = when

    @transition(field=state, source=RunState.RUNNING, target=RunState.PAUSED)
    def pause(self, *, reason: str) -> None:
        self.note = reason[:500]

    @transition(field=state, source=RunState.PAUSED, target=RunState.RUNNING)
    def resume(self) -> None:
        self.note = ""

    @transition(field=state, source=RunState.RUNNING, target=RunState.COMPLETED)
    def complete(self, *, when) -> None:
        self.completed_at = when

    @transition(field=state, source=[RunState.CREATED, RunState.PAUSED], target=RunState.CANCELLED)
    def cancel(self, *, reason: str) -> None:
        self.note = reason[:500]


class StatementState(models.TextChoices):
    HELD = "held"  # missing or suspect reads: waits for review, nothing sent
    COMPUTED = "computed"  # bill computed, not handed to the pipeline yet
    HANDED = "handed"  # its communication exists
    SKIPPED = "skipped"  # a reviewer decided not to send it


class Statement(models.Model):
    """One customer's statement for one period: the computation's inputs and result, stored so
    it can be shown, reproduced and reprinted byte for byte. One per customer and period."""

    run = models.ForeignKey(StatementRun, on_delete=models.PROTECT, related_name="statements")
    customer = models.ForeignKey(
        "notifications.Customer", on_delete=models.PROTECT, related_name="statements"
    )
    period_start = models.DateField()
    period_end = models.DateField()
    state = models.CharField(max_length=10, choices=StatementState.choices)
    reason = models.CharField(max_length=500, blank=True)
    tariff_codes = models.JSONField(default=list, blank=True)
    total = models.DecimalField(max_digits=12, decimal_places=2, null=True)
    inputs = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    data = models.JSONField(default=dict, blank=True, help_text="What the template rendered")
    communication = models.ForeignKey(
        "notifications.Communication",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["run", "customer_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "period_start", "period_end"],
                name="statement_one_per_customer_period",
            )
        ]
        indexes = [models.Index(fields=["run", "state"])]

    def __str__(self) -> str:
        return f"Statement {self.customer_id} {self.period_start}-{self.period_end} ({self.state})"
