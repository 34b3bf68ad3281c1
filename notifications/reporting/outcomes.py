"""The campaign-outcome report: for each campaign that was sending during the period, its
audience, who was skipped and why, what became of every communication (reconciled stage by
stage, from the campaign's live rows through its reference) and the deliveries per channel."""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from datetime import date

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from notifications.campaigns.models import Campaign, CampaignRecipient, RecipientState
from notifications.campaigns.selectors import unreached
from notifications.channels.printstream import csv_cell
from notifications.models import Delivery
from notifications.reporting.charts import svg_chart
from notifications.reporting.reconciliation import Scope, reconcile
from notifications.reporting.rollups import RETURNED, day_bounds, delivery_counts
from notifications.reporting.selectors import percent, rate

# Delivered green, in flight blue, bounced amber, failed red, not sent grey.
OUTCOME_COLORS = ("#1f7a3f", "#0b5cad", "#e07b00", "#b3261e", "#8a93a3")
CSV_COLUMNS = (
    "campaign_id",
    "campaign",
    "state",
    "category",
    "template",
    "template_version",
    "started_at",
    "completed_at",
    "audience",
    "handed",
    "skipped",
    "pending",
    "requested",
    "delivered",
    "bounced",
    "returned",
    "failed",
    "in_flight",
    "compose_failed",
    "cancelled",
    "delivery_rate",
    "reconciled",
)


def campaigns_in_period(*, start: date, end: date, campaign: str = "") -> QuerySet[Campaign]:
    """Campaigns that were sending at some time in [start, end]: started by its end, and not
    completed before it began. `campaign` (an id) narrows to one."""
    period_start, _ = day_bounds(start)
    _, period_end = day_bounds(end)
    campaigns = Campaign.objects.select_related("template_version__template").filter(
        Q(completed_at__isnull=True) | Q(completed_at__gte=period_start),
        started_at__isnull=False,
        started_at__lt=period_end,
    )
    if campaign:
        campaigns = campaigns.filter(pk=int(campaign))
    return campaigns.order_by("started_at", "pk")


def campaign_outcome(campaign: Campaign) -> dict:
    """One campaign's figures: recipients, the three reconciliation lines, deliveries."""
    recipients = CampaignRecipient.objects.filter(campaign=campaign)
    by_state = dict(recipients.order_by().values_list("state").annotate(n=Count("pk")))
    # Skipped by the campaign, or found unreachable by the pipeline's channel selection.
    reasons = sorted(Counter(unreached(campaign).values()).items(), key=lambda r: (-r[1], r[0]))[:5]
    first_day = timezone.localdate(campaign.started_at or timezone.now())
    last_day = timezone.localdate(campaign.completed_at) if campaign.completed_at else None
    recon = reconcile(
        Scope(start=first_day, end=last_day or timezone.localdate(), reference=campaign.reference)
    )
    requested, composed, dispatched = recon["lines"]
    parts = {p["label"]: p["count"] for line in recon["lines"] for p in line["parts"]}
    channels: dict[str, Counter] = defaultdict(Counter)
    for row in delivery_counts(
        Delivery.objects.filter(communication__correlation_id=campaign.reference)
    ):
        channels[row["channel"]][row["status"]] += row["count"]
    handed = by_state.get(RecipientState.HANDED, 0)
    version = campaign.template_version
    return {
        "campaign": campaign,
        "template": version.template.code if version else "",
        "template_version": version.number if version else None,
        "audience": campaign.audience_count,
        "handed": handed,
        "skipped": by_state.get(RecipientState.SKIPPED, 0),
        "pending": by_state.get(RecipientState.PENDING, 0),
        "skip_reasons": [{"reason": r or "(no reason given)", "n": n} for r, n in reasons],
        "requested": requested["total"]["count"],
        "delivered": parts["Delivered"],
        "bounced": parts["Bounced"],
        "returned": parts["Returned"],
        "failed": parts["Failed"],
        "in_flight": parts["In flight"],
        "compose_failed": parts["Compose failed"],
        "cancelled": parts["Cancelled"],
        "held": parts["Held (awaiting release)"],
        "delivery_rate": rate(parts["Delivered"], handed),
        "delivery_rate_pct": percent(rate(parts["Delivered"], handed)),
        "reconciliation": recon,
        "differences": [line["difference"] for line in (requested, composed, dispatched)],
        "channels": [
            {
                "channel": channel,
                "total": sum(c.values()),
                "delivered": c["delivered"],
                "in_flight": c["pending"] + c["sending"] + c["sent"],
                "bounced": c["bounced"] + c[RETURNED],
                "failed": c["failed"],
            }
            for channel, c in sorted(channels.items())
        ],
        "duration_s": (
            (campaign.completed_at - campaign.started_at).total_seconds()
            if campaign.completed_at and campaign.started_at
            else None
        ),
    }


def campaign_outcome_data(*, start: date, end: date, filters: dict) -> dict:
    """The figures and charts of a campaign-outcome report over [start, end]."""
    rows = [
        campaign_outcome(c)
        for c in campaigns_in_period(start=start, end=end, campaign=filters.get("campaign", ""))
    ]
    labels = [_short(r["campaign"].name) for r in rows] or ["\u2013"]

    def series(*keys: str) -> list[int]:
        return [sum(r[k] for k in keys) for r in rows] or [0]

    channels: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        for c in r["channels"]:
            channels[c["channel"]].update(
                {k: c[k] for k in ("delivered", "in_flight", "bounced", "failed")}
            )
    charts = {
        "outcomes": svg_chart(
            "stacked",
            labels,
            {
                "Delivered": series("delivered"),
                "In flight": series("in_flight"),
                "Bounced": series("bounced", "returned"),
                "Failed": series("failed"),
                "Not sent": series("skipped", "compose_failed", "cancelled"),
            },
            title="What became of each campaign's audience",
            width=640,
            height=260,
            chart_id="report-campaigns",
            colors=OUTCOME_COLORS,
            counts=True,
        ),
        "channels": svg_chart(
            "stacked",
            sorted(channels) or ["\u2013"],
            {
                "Delivered": [channels[c]["delivered"] for c in sorted(channels)] or [0],
                "In flight": [channels[c]["in_flight"] for c in sorted(channels)] or [0],
                "Bounced / returned": [channels[c]["bounced"] for c in sorted(channels)] or [0],
                "Failed": [channels[c]["failed"] for c in sorted(channels)] or [0],
            },
            title="Campaign deliveries by channel and outcome",
            width=640,
            height=220,
            chart_id="report-campaign-channels",
            colors=OUTCOME_COLORS,
            counts=True,
        ),
    }
    audience = sum(r["audience"] for r in rows)
    delivered = sum(r["delivered"] for r in rows)
    handed = sum(r["handed"] for r in rows)
    summary = {
        "campaigns": len(rows),
        "audience": audience,
        "handed": handed,
        "skipped": sum(r["skipped"] for r in rows),
        "delivered": delivered,
        "failed": sum(r["failed"] + r["compose_failed"] for r in rows),
        "bounced": sum(r["bounced"] + r["returned"] for r in rows),
        "delivery_rate": rate(delivered, handed),
        "balanced": all(r["reconciliation"]["balanced"] for r in rows),
    }
    return {
        "kind": "campaign_outcome",
        "start": start,
        "end": end,
        "empty": not rows,
        "summary": summary,
        "delivery_rate_pct": percent(summary["delivery_rate"]),
        "campaigns": rows,
        "charts": charts,
    }


def campaign_outcome_csv(data: dict) -> bytes:
    """One line per campaign with its figures."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in data["campaigns"]:
        campaign = r["campaign"]
        writer.writerow(
            [
                campaign.pk,
                csv_cell(campaign.name),
                campaign.state,
                campaign.category,
                csv_cell(r["template"]),
                r["template_version"] or "",
                campaign.started_at.isoformat() if campaign.started_at else "",
                campaign.completed_at.isoformat() if campaign.completed_at else "",
                r["audience"],
                r["handed"],
                r["skipped"],
                r["pending"],
                r["requested"],
                r["delivered"],
                r["bounced"],
                r["returned"],
                r["failed"],
                r["in_flight"],
                r["compose_failed"],
                r["cancelled"],
                "" if r["delivery_rate"] is None else f"{r['delivery_rate']:.4f}",
                "yes" if r["reconciliation"]["balanced"] else "no",
            ]
        )
    return out.getvalue().encode("utf-8")


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"
