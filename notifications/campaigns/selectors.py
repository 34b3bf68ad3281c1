"""Reads for segments and campaigns: a segment compiled to one queryset, its preview (count,
sample, channel breakdown in aggregate SQL), and a campaign's live progress."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import BooleanField, Count, ExpressionWrapper, OuterRef, Q, QuerySet, Subquery
from django.urls import reverse
from django.utils import timezone

from documents.models import TemplateVersion
from notifications.campaigns.models import (
    Campaign,
    CampaignRecipient,
    CampaignState,
    RecipientState,
    Segment,
)
from notifications.models import (
    CommState,
    ConsentRecord,
    ContactKind,
    ContactPoint,
    Customer,
    Delivery,
    Device,
    Preference,
    Suppression,
)
from notifications.pipeline import selection
from notifications.pipeline.facts import enabled_channels
from notifications.progress import PER_KIND, Work

# What a segment definition may say; anything else is refused (a typo must not widen it).
SEGMENT_KEYS = {
    "source_systems": "customers of these source systems",
    "languages": "customers speaking these languages",
    "postcode_prefixes": "attributes.postcode starting with one of these (case-insensitive)",
    "tags": "attributes.tags containing every one of these",
    "attributes": "attribute equality {name: value} or membership {name: [values]}",
    "consent": "{channel, category, granted}: the latest consent record says so",
    "references": "an uploaded list of customer references (external_ref)",
    "include": "ids of other segments whose customers are added",
    "exclude": "ids of other segments whose customers are removed",
}
MAX_NESTING = 5


class SegmentInvalid(ValueError):
    pass


def segment_definition_errors(definition: Any) -> list[str]:
    """What is wrong with a segment definition, in words ([] when it is usable)."""
    if not isinstance(definition, dict):
        return ["The definition must be a JSON object."]
    errors = [
        f"Unknown filter {key!r}; use one of {', '.join(sorted(SEGMENT_KEYS))}."
        for key in definition
        if key not in SEGMENT_KEYS
    ]
    for key in ("source_systems", "languages", "postcode_prefixes", "tags", "references"):
        value = definition.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)
        ):
            errors.append(f"{key} must be a list of non-empty strings.")
    attributes = definition.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        errors.append("attributes must be an object {name: value or [values]}.")
    consent = definition.get("consent")
    if consent is not None and (
        not isinstance(consent, dict)
        or not {"channel", "category", "granted"} <= set(consent)
        or not isinstance(consent.get("granted"), bool)
    ):
        errors.append("consent needs channel, category and granted (true or false).")
    for key in ("include", "exclude"):
        value = definition.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            errors.append(f"{key} must be a list of segment ids.")
            continue
        missing = set(value) - set(
            Segment.objects.filter(pk__in=value).values_list("pk", flat=True)
        )
        if missing:
            errors.append(f"{key} names segments that do not exist: {sorted(missing)}.")
    return errors


def segment_customers(definition: dict, *, _depth: int = 0) -> QuerySet[Customer]:
    """The customers a definition selects, as ONE queryset (one SQL statement): filters are
    ANDed, `include` adds the customers of other segments, `exclude` removes them."""
    if _depth > MAX_NESTING:
        raise SegmentInvalid(f"Segments nest more than {MAX_NESTING} deep (a cycle?).")
    q = Q()
    if definition.get("source_systems"):
        q &= Q(source_system__in=definition["source_systems"])
    if definition.get("languages"):
        q &= Q(language__in=definition["languages"])
    if definition.get("postcode_prefixes"):
        prefixes = Q()
        for prefix in definition["postcode_prefixes"]:
            prefixes |= Q(attributes__postcode__istartswith=prefix)
        q &= prefixes
    postgres = connection.vendor == "postgresql"
    if definition.get("tags"):
        if not postgres:
            raise SegmentInvalid("Filtering on tags needs PostgreSQL.")
        q &= Q(attributes__contains={"tags": list(definition["tags"])})
    for name, value in (definition.get("attributes") or {}).items():
        if isinstance(value, list):
            q &= Q(**{f"attributes__{name}__in": value})
        elif postgres:
            # jsonb containment: served by the GIN index.
            q &= Q(attributes__contains={name: value})
        else:
            q &= Q(**{f"attributes__{name}": value})
    if definition.get("references") is not None:
        q &= Q(external_ref__in=definition["references"])
    consent = definition.get("consent")
    if consent:
        latest = ConsentRecord.objects.filter(
            customer=OuterRef("pk"), channel=consent["channel"], category=consent["category"]
        ).order_by("-recorded_at", "-id")
        q &= Q(pk__in=_with_latest_consent(latest, granted=consent["granted"]))
    customers = Customer.objects.filter(q)
    if definition.get("include"):
        extra = Q()
        for segment in Segment.objects.filter(pk__in=definition["include"]):
            extra |= Q(pk__in=segment_customers(segment.definition, _depth=_depth + 1).values("pk"))
        customers = Customer.objects.filter(Q(pk__in=customers.values("pk")) | extra)
    for segment in Segment.objects.filter(pk__in=definition.get("exclude") or []):
        customers = customers.exclude(
            pk__in=segment_customers(segment.definition, _depth=_depth + 1).values("pk")
        )
    return customers


def _with_latest_consent(latest: QuerySet, *, granted: bool) -> QuerySet:
    return (
        Customer.objects.annotate(latest=Subquery(latest.values("granted")[:1]))
        .filter(latest=granted)
        .values("pk")
    )


# --- channel breakdown ----------------------------------------------------------------------


@dataclass
class Breakdown:
    """How many customers selection would reach on each channel today, and how many it cannot
    reach at all ("none")."""

    total: int = 0
    channels: dict[str, int] = field(default_factory=dict)
    combinations: dict[str, int] = field(default_factory=dict)  # "email+print" → count
    unreachable: int = 0
    sampled: int = 0  # when estimated: how many customers of the segment the sample held

    @property
    def estimated(self) -> bool:
        return self.sampled > 0

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "channels": dict(sorted(self.channels.items())),
            "combinations": dict(sorted(self.combinations.items())),
            "unreachable": self.unreachable,
            "estimated": self.estimated,
            "sampled": self.sampled,
        }

    def scaled_to(self, total: int) -> Breakdown:
        """This breakdown of a sample, as an estimate for `total` customers: each combination
        in proportion, rounded so the combinations add up to `total` (largest remainders)."""
        shares = {k: n * total / self.total for k, n in self.combinations.items()}
        combinations = {k: int(share) for k, share in shares.items()}
        by_remainder = sorted(shares, key=lambda k: shares[k] - combinations[k], reverse=True)
        for k in by_remainder[: total - sum(combinations.values())]:
            combinations[k] += 1
        channels: Counter[str] = Counter()
        for combination, n in combinations.items():
            for channel in combination.split("+") if combination != "none" else ():
                channels[channel] += n
        return Breakdown(
            total=total,
            channels=dict(channels),
            combinations={k: n for k, n in combinations.items() if n},
            unreachable=combinations.get("none", 0),
            sampled=self.sampled or self.total,
        )


CHANNELS = ("email", "sms", "push", "print")
# Up to this many customers, the facts are looked up per customer of the segment.
SMALL_SEGMENT = 100_000
# A preview of a larger segment counts it exactly but estimates its channel breakdown from a
# sample of about SAMPLE_CUSTOMERS of its customers (a share to within about 1 %): the exact
# breakdown of 50,000 customers takes about 3 s, of a million 8 s, on the shared 2-core machine.
ESTIMATE_ABOVE = 20_000
SAMPLE_CUSTOMERS = 20_000


def renditions_of(version: TemplateVersion) -> list[str]:
    enabled = set(enabled_channels())
    return [c for c in version.meta.get("channels", []) if c in enabled]


def channel_breakdown(
    customers: QuerySet[Customer],
    *,
    category: str,
    urgency: str = "normal",
    renditions,
    size: int | None = None,
    sample_percent: float = 100.0,
) -> Breakdown:
    """The channels `selection.select_channels` would choose for each customer, counted.

    One aggregate statement groups the customers by what selection looks at (a usable address
    per channel, the preference and, for marketing, the latest consent per channel for this
    category); the selection function then runs once per group, not once per customer. Each
    fact is one table, aggregated over the segment's customers only (the segment is a CTE
    evaluated once) and LEFT JOINed on the customer id: hash joins for a large segment, index
    lookups for a small one, never a subquery per customer.

    `size`: the segment's count when the caller has it; `sample_percent` < 100 breaks down
    only the customers on that share of the customer table's pages (PostgreSQL's TABLESAMPLE
    SYSTEM, the same pages every time): see `segment_preview`."""
    postal = ExpressionWrapper(
        Q(postal_address_valid=True) & ~Q(postal_address=[]), output_field=BooleanField()
    )
    segment_sql, segment_params = (
        customers.order_by().annotate(postal=postal).values("pk", "postal").query.sql_with_params()
    )
    if sample_percent < 100:
        segment_sql = _sampled(segment_sql, sample_percent)
    if size is None:
        size = customers.count()
    small = size * sample_percent / 100 <= SMALL_SEGMENT
    columns, joins, params = _fact_sql(category, small=small)
    names = [name for name, _ in columns]
    sql = (
        f"WITH seg(id, p) AS ({segment_sql}) SELECT "  # noqa: S608 - the segment's own SQL
        + ", ".join(f"{expression} AS {name}" for name, expression in columns)
        + ", c.p AS p, COUNT(*) AS n FROM seg c "
        + " ".join(joins)
        + " GROUP BY "
        + ", ".join(str(i) for i in range(1, len(columns) + 2))
    )
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Compiling this one statement costs more than it saves (~0.2 s).
            cursor.execute("SET LOCAL jit = off")
            # Hash tables of a million ids stay in memory instead of spilling in batches.
            cursor.execute("SET LOCAL work_mem = '64MB'")
        cursor.execute(sql, [*segment_params, *params])
        rows = cursor.fetchall()
    result = Breakdown()
    channel_counts: Counter[str] = Counter()
    combinations: Counter[str] = Counter()
    for row in rows:
        group = dict(zip([*names, "p"], row[:-1], strict=True))
        n = row[-1]
        result.total += n
        chosen = selection.select_channels(_facts_of(group, category, urgency, renditions))
        if not chosen.targets:
            result.unreachable += n
            combinations["none"] += n
            continue
        combinations["+".join(chosen.channels)] += n
        for channel in chosen.channels:
            channel_counts[channel] += n
    result.channels = dict(channel_counts)
    result.combinations = dict(combinations)
    return result


def _sampled_breakdown(customers: QuerySet[Customer], size: int, category, renditions) -> Breakdown:
    """The breakdown of a segment of about `size` customers from a sample of about
    SAMPLE_CUSTOMERS of them, scaled to the segment's estimated size."""
    percent = min(100.0, 100 * SAMPLE_CUSTOMERS / size)
    sampled = channel_breakdown(
        customers, category=category, renditions=renditions, size=size, sample_percent=percent
    )
    return sampled.scaled_to(round(sampled.total * 100 / percent))


def _customers_estimate() -> int:
    """PostgreSQL's own count of the customer table as of its last ANALYZE (0 elsewhere, or
    never analysed): free, and close enough to size a sample."""
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [Customer._meta.db_table]
        )
        row = cursor.fetchone()
    return max(0, int(row[0])) if row else 0


def _sampled(segment_sql: str, percent: float) -> str:
    """The segment's statement over a repeatable sample of the customer table's pages. The
    first FROM of the customer table is the statement's own (its columns hold no subquery)."""
    table = connection.ops.quote_name(Customer._meta.db_table)
    head, found, rest = segment_sql.partition(f" FROM {table}")
    if not found:
        raise ValueError("the segment's statement does not read the customer table")
    return f"{head}{found} TABLESAMPLE SYSTEM ({percent:.6f}) REPEATABLE (0){rest}"


def _fact_sql(category: str, *, small: bool) -> tuple[list[tuple[str, str]], list[str], list]:
    """(name, expression) columns, the joins that feed them and their parameters, in order.
    Table names come from the models' metadata; every value is a parameter."""

    def within(column: str) -> str:
        # A small segment: index lookups for its customers only; a large one: one scan of the
        # whole table is cheaper than a lookup per customer.
        return f" AND {column} IN (SELECT id FROM seg)" if small else ""  # noqa: S608

    contacts = ContactPoint._meta.db_table
    suppressions = Suppression._meta.db_table
    joins = [
        # One pass over the contact points: is there a usable (valid, unsuppressed) email, phone?
        "LEFT JOIN (SELECT cp.customer_id, "  # noqa: S608
        "MAX(CASE WHEN cp.kind = %s THEN 1 ELSE 0 END) AS e, "
        "MAX(CASE WHEN cp.kind = %s THEN 1 ELSE 0 END) AS s "
        f"FROM {contacts} cp LEFT JOIN {suppressions} su ON su.address = cp.value "
        "AND su.lifted_at IS NULL AND su.channel = CASE WHEN cp.kind = %s THEN %s ELSE %s END "
        f"WHERE cp.valid AND su.id IS NULL{within('cp.customer_id')} GROUP BY cp.customer_id) "
        "cps ON cps.customer_id = c.id",
        f"LEFT JOIN (SELECT DISTINCT customer_id FROM {Device._meta.db_table} "  # noqa: S608
        f"WHERE active{within('customer_id')}) d ON d.customer_id = c.id",
    ]
    params: list = [ContactKind.EMAIL, ContactKind.PHONE, ContactKind.EMAIL, "email", "sms"]
    columns = [
        ("e", "COALESCE(cps.e, 0)"),
        ("s", "COALESCE(cps.s, 0)"),
        ("d", "(d.customer_id IS NOT NULL)"),
    ]
    flags = []
    for channel in CHANNELS:
        flags += [
            f"MAX(CASE WHEN channel = %s AND allowed THEN 1 ELSE 0 END) AS pref_yes_{channel}",
            f"MAX(CASE WHEN channel = %s AND NOT allowed THEN 1 ELSE 0 END) AS pref_no_{channel}",
        ]
        params += [channel, channel]
        columns += [
            (f"pref_yes_{channel}", f"COALESCE(pr.pref_yes_{channel}, 0)"),
            (f"pref_no_{channel}", f"COALESCE(pr.pref_no_{channel}, 0)"),
        ]
    joins.append(
        f"LEFT JOIN (SELECT customer_id, {', '.join(flags)} FROM {Preference._meta.db_table} "  # noqa: S608
        f"WHERE category = %s{within('customer_id')} GROUP BY customer_id) pr "
        "ON pr.customer_id = c.id"
    )
    params.append(category)
    if category == "marketing":
        flags = []
        for channel in CHANNELS:
            flags.append(
                f"MAX(CASE WHEN channel = %s AND granted THEN 1 ELSE 0 END) AS opt_in_{channel}"
            )
            params.append(channel)
            columns.append((f"opt_in_{channel}", f"COALESCE(k.opt_in_{channel}, 0)"))
        joins.append(
            f"LEFT JOIN (SELECT customer_id, {', '.join(flags)} FROM (SELECT customer_id, "  # noqa: S608
            "channel, granted, ROW_NUMBER() OVER (PARTITION BY customer_id, channel "
            f"ORDER BY recorded_at DESC, id DESC) AS latest FROM {ConsentRecord._meta.db_table} "
            f"WHERE category = %s{within('customer_id')}) x "
            "WHERE latest = 1 GROUP BY customer_id) k ON k.customer_id = c.id"
        )
        params.append(category)
    return columns, joins, params


def _facts_of(group: dict, category: str, urgency: str, renditions) -> selection.Facts:
    # Placeholder addresses: selection only asks whether a usable one exists.
    preferences: dict[str, bool] = {}
    consents: dict[str, bool] = {}
    for channel in CHANNELS:
        if group[f"pref_yes_{channel}"]:
            preferences[channel] = True
        elif group[f"pref_no_{channel}"]:
            preferences[channel] = False
        if group.get(f"opt_in_{channel}"):
            consents[channel] = True
    return selection.Facts(
        category=category,
        urgency=urgency,
        renditions=list(renditions),
        emails=["email"] if group["e"] else [],
        phones=["phone"] if group["s"] else [],
        devices=["device"] if group["d"] else [],
        postal_address=["address"] if group["p"] else [],
        preferences=preferences,
        consents=consents,
    )


@dataclass
class Preview:
    count: int
    sample: list[Customer]
    breakdown: Breakdown


def segment_preview(
    definition: dict, *, category: str, renditions, sample_size: int = 10
) -> Preview:
    """The segment's exact count, a sample of its customers and its channel breakdown today:
    exact up to ESTIMATE_ABOVE customers, estimated from a sample of the larger ones (the
    breakdown says so). A campaign's channel plan, what the reviewer signs, is always exact."""
    customers = segment_customers(definition)
    breakdown, count, estimate = Breakdown(), None, None
    # Sampling pages is PostgreSQL's (TABLESAMPLE); elsewhere (the embedded SQLite) every
    # breakdown is exact.
    table_rows = _customers_estimate() if connection.vendor == "postgresql" else 0
    if table_rows > ESTIMATE_ABOVE:
        # The segment on a sample of about SAMPLE_CUSTOMERS customers' pages says roughly how
        # big it is; a big one is then broken down on a sample of about SAMPLE_CUSTOMERS of
        # its own customers.
        estimate = _sampled_breakdown(customers, table_rows, category, renditions).total
        if estimate > ESTIMATE_ABOVE:
            count = customers.count()
            breakdown = _sampled_breakdown(customers, estimate, category, renditions)
    if count is None:
        breakdown = channel_breakdown(
            customers, category=category, renditions=renditions, size=estimate
        )
        count = breakdown.total
    else:
        breakdown = breakdown.scaled_to(count)
    sample = list(customers.order_by("pk")[:sample_size])
    return Preview(count=count, sample=sample, breakdown=breakdown)


# --- who was not reached ---------------------------------------------------------------------


def unreached_reason(category: str, trace: list[dict]) -> str:
    """Why selection reached nobody, in words, from its decision trace (the pipeline records it
    on the communication when it composes)."""
    refused = [f"{t['channel']}: {t['reason']}" for t in trace if t.get("eligible") is False]
    if category == "marketing" and any("marketing" in r for r in refused):
        return "opted out of marketing since approval (" + "; ".join(refused) + ")"
    return "unreachable: " + ("; ".join(refused) or "no channel can reach the customer")


def unreached(campaign: Campaign) -> dict[int, str]:
    """Recipient id → why the customer was not sent the notice: skipped by the campaign
    (cancelled, refused by the intake), or handed and found unreachable by the pipeline's
    channel selection (undeliverable, with the reason from its decision trace)."""
    reasons = dict(
        CampaignRecipient.objects.filter(
            campaign=campaign, state=RecipientState.SKIPPED
        ).values_list("pk", "reason")
    )
    for pk, trace, failure in CampaignRecipient.objects.filter(
        campaign=campaign,
        state=RecipientState.HANDED,
        communication__state=CommState.UNDELIVERABLE,
    ).values_list("pk", "communication__decision_trace", "communication__failure_reason"):
        if any(t.get("decision") == "chosen" for t in trace or []):
            # Reached a channel once, then ran out of fallbacks: the pipeline says why.
            reasons[pk] = f"undeliverable: {failure}"
        else:
            reasons[pk] = unreached_reason(campaign.category, trace or [])
    return reasons


# --- campaign progress ----------------------------------------------------------------------

RATE_WINDOW = timedelta(seconds=60)


def campaign_progress(campaign: Campaign) -> dict:
    """Counts per recipient state, per communication state and per channel and delivery state,
    the rate of the last minute and the time left at that rate."""
    recipients = CampaignRecipient.objects.filter(campaign=campaign)
    by_state = dict(
        recipients.order_by().values_list("state").annotate(n=Count("pk")).values_list("state", "n")
    )
    communications = dict(
        recipients.filter(communication__isnull=False)
        .order_by()
        .values_list("communication__state")
        .annotate(n=Count("pk"))
        .values_list("communication__state", "n")
    )
    deliveries: dict[str, dict[str, int]] = {}
    for channel, state, n in (
        Delivery.objects.filter(
            communication_id__in=recipients.filter(communication__isnull=False).values(
                "communication_id"
            )
        )
        .order_by()
        .values_list("channel", "state")
        .annotate(n=Count("pk"))
    ):
        deliveries.setdefault(channel, {})[state] = n
    now = timezone.now()
    recent = recipients.filter(handed_at__gte=now - RATE_WINDOW).count()
    per_minute = recent * 60 / RATE_WINDOW.total_seconds()
    pending = by_state.get(RecipientState.PENDING, 0)
    total = campaign.audience_count
    done = campaign_done(total=total, pending=pending)
    return {
        "state": campaign.state,
        "note": campaign.note,
        "total": total,
        "done": done,
        "percent": round(100 * done / total, 1) if total else 0.0,
        "recipients": {s: by_state.get(s, 0) for s in RecipientState.values},
        "communications": dict(sorted(communications.items())),
        "deliveries": dict(sorted(deliveries.items())),
        "rate_per_minute": round(per_minute, 1),
        "eta_seconds": round(pending * 60 / per_minute) if per_minute and pending else None,
    }


def campaign_done(*, total: int, pending: int) -> int:
    """Recipients handed to the pipeline or skipped: what the campaign's bar counts as done."""
    return total - pending


# Campaigns whose bar can still move (scheduled waits for its time, paused for an operator).
MOVING_STATES = (CampaignState.SCHEDULED, CampaignState.SENDING, CampaignState.PAUSED)


def campaigns_progress(*, since: datetime) -> Iterator[Work]:
    """The dashboard's progress source: campaigns under way, and those finished since `since`
    (counted per campaign from the recipients' state index, without the delivery breakdown)."""
    campaigns = list(
        Campaign.objects.filter(
            Q(state__in=MOVING_STATES) | Q(state=CampaignState.COMPLETED, completed_at__gte=since)
        ).order_by("-id")[:PER_KIND]
    )
    pending = dict(
        CampaignRecipient.objects.filter(campaign__in=campaigns, state=RecipientState.PENDING)
        .order_by()
        .values_list("campaign_id")
        .annotate(n=Count("pk"))
    )
    for campaign in campaigns:
        yield Work(
            kind="campaign",
            key=f"campaign:{campaign.pk}",
            label=f"Campaign {campaign.name}",
            state=campaign.state,
            done=campaign_done(total=campaign.audience_count, pending=pending.get(campaign.pk, 0)),
            total=campaign.audience_count,
            finished=campaign.state == CampaignState.COMPLETED,
            url=reverse("campaign-detail", args=[campaign.pk]),
            permissions=("notifications.view_campaign",),
            reference=campaign.reference,
            started_at=campaign.started_at,
        )


def segment_sign_offs(segment: Segment) -> QuerySet[Campaign]:
    """The campaigns whose reviewers signed this segment version's audience: a segment has no
    sign-off of its own; each campaign freezes the customers it selects and its approval
    covers the definition as it was, the count and the audience hash."""
    return (
        Campaign.objects.filter(segment=segment, approval__isnull=False)
        .select_related("approval__decided_by", "submitted_by")
        .order_by("-submitted_at", "-pk")
    )


def campaigns_list(*, state: str = "", q: str = "") -> QuerySet[Campaign]:
    campaigns = Campaign.objects.select_related("segment", "template_version__template")
    if state:
        campaigns = campaigns.filter(state=state)
    if q:
        campaigns = campaigns.filter(name__icontains=q)
    return campaigns
