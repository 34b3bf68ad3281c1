"""Demo meters, readings and tariffs, so that the demo's usage statements are computed by a
statement run from 13 months of half-hourly readings, not typed in.

Eleanor Hartley is on Economy 7 and her tariff's rates change in the middle of the month;
Tomasz Nowak (German) is on a flat rate and two of his half-hours are missing (estimated and
marked); Daniel Okafor's meter sent nothing for a day, so he is held for review with the reason.
The recommendation rules (v1) are signed off by the demo reviewer. Running it again changes
nothing (readings are idempotent, and a customer has one statement per period)."""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.utils import timezone

from ccm import approvals
from documents import selectors as document_selectors
from notifications.customers.assets.models import Asset, AssetKind, ServicePoint
from notifications.models import Customer
from notifications.statements import assemble, readings, recommendations, services
from notifications.statements.models import (
    CustomerTariff,
    Meter,
    RecommendationRuleSet,
    StatementRun,
    Tariff,
    TariffBand,
)

# (customer, meter serial, tariff codes from the start, with a change on the 16th, gaps)
METERS = [
    ("NW-2048-7731", "E-19K0042871", "e7", 0.9, []),
    ("NW-3310-0042", "E-21L0007730", "flat", 0.7, [(-10, 2)]),
    ("NW-7410-3300", "E-22M0310044", "flat", 0.8, [(-20, 48)]),
]
TARIFFS = [
    ("flat", "Northwind Standard", "0.4912", [("all day", "00:00", "00:00", "0.2450")]),
    (
        "e7",
        "Northwind Economy 7",
        "0.5312",
        [("day", "07:00", "00:00", "0.2861"), ("night", "00:00", "07:00", "0.1402")],
    ),
    (
        "e7-new",
        "Northwind Economy 7 (new rates)",
        "0.5480",
        [("day", "07:00", "00:00", "0.2795"), ("night", "00:00", "07:00", "0.1388")],
    ),
]


def demo_period(today: date | None = None) -> tuple[date, date]:
    """The last full calendar month."""
    first_this = (today or timezone.localdate()).replace(day=1)
    end = first_this - timedelta(days=1)
    return end.replace(day=1), end


def _usage(n: int, scale: float, month: int) -> Decimal:
    """A household's half-hour: a night baseload, morning and evening peaks, more in winter."""
    hour = (n % 48) / 2
    winter = 1 + 0.35 * math.cos((month - 1) / 12 * 2 * math.pi)
    peak = 0.42 if 7 <= hour < 9 or 17 <= hour < 22 else 0.12 if 9 <= hour < 17 else 0.0
    wobble = 0.04 * math.sin(n / 11) + 0.02 * math.sin(n / 3.7)
    return Decimal(str(round(scale * winter * (0.11 + peak + wobble), 3))).max(Decimal("0.01"))


def _tariffs(period_start: date) -> dict[str, Tariff]:
    out = {}
    for code, name, standing, bands in TARIFFS:
        tariff, created = Tariff.objects.get_or_create(
            code=code,
            defaults={
                "name": name,
                "standing_charge": Decimal(standing),
                "vat_rate": Decimal("0.05"),
                "valid_from": date(2020, 1, 1),
            },
        )
        if created:
            for band, start, end, rate in bands:
                TariffBand.objects.create(
                    tariff=tariff,
                    name=band,
                    start_time=time.fromisoformat(start),
                    end_time=time.fromisoformat(end),
                    unit_rate=Decimal(rate),
                )
        out[code] = tariff
    return out


def _meter(customer: Customer, serial: str) -> Meter:
    region, _ = Asset.objects.get_or_create(
        code="region-demo",
        defaults={"kind": AssetKind.REGION, "name": "Demo region", "path": "region-demo/"},
    )
    asset, _ = Asset.objects.get_or_create(
        code=f"meter-{serial}",
        defaults={
            "kind": AssetKind.METER,
            "parent": region,
            "path": f"region-demo/meter-{serial}/",
        },
    )
    point, _ = ServicePoint.objects.get_or_create(
        code=f"sp-{serial}",
        defaults={
            "customer": customer,
            "asset": asset,
            "address": ", ".join(customer.postal_address),
        },
    )
    meter, _ = Meter.objects.get_or_create(serial=serial, defaults={"service_point": point})
    return meter


def _rules() -> None:
    if RecommendationRuleSet.objects.exists():
        return
    User = get_user_model()
    rule_set = services.rule_set_create(
        rules=recommendations.DEFAULT_RULES, by=User.objects.get(username="author")
    )
    approval = services.rule_set_submit(rule_set=rule_set, by=User.objects.get(username="author"))
    approvals.approval_decide(
        approval=approval,
        by=User.objects.get(username="reviewer"),
        decision="approve",
        comment="Demo rules sign-off",
    )


def seed_statements() -> None:
    if document_selectors.version_for_sending(code="usage_statement") is None:
        return
    period_start, period_end = demo_period()
    zone = assemble.business_zone()
    tariffs = _tariffs(period_start)
    history_start = assemble._add_months(period_start, -12)
    first = datetime.combine(history_start, time(0), zone)
    end = datetime.combine(period_end + timedelta(days=1), time(0), zone)
    for ref, serial, code, scale, gaps in METERS:
        customer = Customer.objects.filter(external_ref=ref).first()
        if customer is None:
            continue
        _meter(customer, serial)
        if not CustomerTariff.objects.filter(customer=customer).exists():
            CustomerTariff.objects.create(
                customer=customer, tariff=tariffs[code], valid_from=history_start
            )
            if code == "e7":  # new rates from the 16th of the statement month
                CustomerTariff.objects.create(
                    customer=customer,
                    tariff=tariffs["e7-new"],
                    valid_from=period_start + timedelta(days=15),
                )
        skipped = set()
        period_first = datetime.combine(period_start, time(0), zone)
        for day_from_end, count in gaps:
            at = period_first + timedelta(days=(period_end - period_start).days + day_from_end)
            skipped |= {at + timedelta(minutes=30 * k) for k in range(count)}
        rows = []
        moment, n = first, 0
        while moment < end:
            if moment not in skipped:
                rows.append(
                    {
                        "meter": serial,
                        "start": moment.isoformat(),
                        "value": str(_usage(n, scale, moment.month)),
                    }
                )
            moment += timedelta(minutes=30)
            n += 1
        for i in range(0, len(rows), readings.MAX_READINGS):
            readings.readings_ingest(rows=rows[i : i + readings.MAX_READINGS])
    _rules()
    if StatementRun.objects.filter(period_start=period_start, period_end=period_end).exists():
        return
    ops = get_user_model().objects.get(username="ops")
    run = services.statement_run_create(period_start=period_start, period_end=period_end, by=ops)
    services.statement_run_start(run=run, by=ops)
