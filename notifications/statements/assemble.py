"""What one statement says, for a chunk of customers at a time: the period's readings checked,
the bill computed from the stored-to-be inputs, the comparisons, the charts' data and the
recommendations, as the template's data.

Reads are batched per chunk (the meters, the period's readings with the weeks before it for the
usual profile, the 13 months' totals, the tariff history and the marketing consent: five
queries), so a run's cost per customer does not grow with the chunk."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Q, Sum
from django.db.models.functions import TruncMonth

from documents.models import Category
from notifications.models import ConsentRecord, Customer
from notifications.statements import billing, recommendations, validation
from notifications.statements.models import (
    CustomerTariff,
    Meter,
    MeterKind,
    Reading,
    RecommendationRuleSet,
    RuleSetState,
    Unit,
)

NIGHT_END = time(7, 0)
TREND_MONTHS = 13


@dataclass
class Outcome:
    customer_id: int
    held: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return "; ".join(self.held)[:500]


def business_zone() -> ZoneInfo:
    return ZoneInfo(settings.TIME_ZONE)


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), zone)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _minus_year(day: date) -> date:
    try:
        return day.replace(year=day.year - 1)
    except ValueError:  # 29 February
        return day.replace(year=day.year - 1, day=28)


def published_rules() -> RecommendationRuleSet | None:
    return RecommendationRuleSet.objects.filter(state=RuleSetState.PUBLISHED).first()


def _tariff_inputs(rows: list[CustomerTariff], first: date, last: date) -> list[dict]:
    """The customer's tariffs that cover [first, last], each with its dates of use."""
    out = []
    for n, row in enumerate(rows):
        tariff = row.tariff
        start = max(row.valid_from, tariff.valid_from)
        ends = [d for d in (tariff.valid_to,) if d is not None]
        if n + 1 < len(rows):
            ends.append(rows[n + 1].valid_from)
        end = min(ends) if ends else None
        if start > last or (end is not None and end <= first):
            continue
        out.append(
            {
                "code": tariff.code,
                "name": tariff.name,
                "from": start.isoformat(),
                "to": end.isoformat() if end else None,
                "standing_charge": str(tariff.standing_charge),
                "vat_rate": str(tariff.vat_rate),
                "vat_rounding": tariff.vat_rounding,
                "bands": [
                    {
                        "name": b.name,
                        "start": b.start_time.isoformat("minutes"),
                        "end": b.end_time.isoformat("minutes"),
                        "rate": str(b.unit_rate),
                    }
                    for b in tariff.bands.all()
                ],
            }
        )
    return out


def _change(now: Decimal, before: Decimal | None) -> Decimal | None:
    if before is None or before <= 0:
        return None
    return ((now - before) / before).quantize(Decimal("0.001"))


def _metrics(inputs: dict, result: dict, zone: ZoneInfo, compare: dict) -> dict:
    consumption = Decimal(result["consumption"])
    metrics: dict[str, Decimal | None] = {
        "consumption": consumption,
        "yoy_change": _change(consumption, compare.get("last_year")),
        "previous_change": _change(consumption, compare.get("previous")),
        "tariff_bands": Decimal(len(inputs["tariffs"][-1]["bands"])),
        "night_share": None,
        "baseload_per_day": None,
    }
    series = inputs.get("series")
    if series and consumption > 0:
        values = [Decimal(v) for v in series["values"]]
        tenth = sorted(values)[len(values) // 10]
        metrics["baseload_per_day"] = tenth * (1440 // int(series["minutes"]))
        # Night use is an electricity matter (a day/night tariff): a gas meter has none.
        if inputs["unit"] == Unit.KWH:
            night = sum(
                (
                    v
                    for moment, v in zip(billing.interval_starts(series), values, strict=True)
                    if moment.astimezone(zone).time() < NIGHT_END
                ),
                Decimal(0),
            )
            metrics["night_share"] = (night / consumption).quantize(Decimal("0.001"))
    return metrics


def statements_assemble(
    *, customer_ids: list[int], period_start: date, period_end: date, document_date: date
) -> dict[int, Outcome]:
    """Compute the statements of `customer_ids` for [period_start, period_end] (local dates)."""
    zone = business_zone()
    rules = validation.Rules.from_settings()
    start_utc = _midnight(period_start, zone)
    end_utc = _midnight(period_end + timedelta(days=1), zone)
    days = (period_end - period_start).days + 1
    customers = Customer.objects.in_bulk(customer_ids)
    meters: dict[int, list[Meter]] = defaultdict(list)
    for meter in (
        Meter.objects.filter(service_point__customer_id__in=customer_ids)
        .select_related("service_point")
        .order_by("serial")
    ):
        meters[meter.service_point.customer_id].append(meter)
    meter_ids = [m.pk for found in meters.values() for m in found]
    readings: dict[int, list[tuple[datetime, Decimal | None, str]]] = defaultdict(list)
    history_from = start_utc - timedelta(days=validation.PROFILE_DAYS)
    for meter_id, start, value, quality in (
        Reading.objects.filter(meter_id__in=meter_ids, start__gte=history_from, start__lt=end_utc)
        .order_by("meter_id", "start")
        .values_list("meter_id", "start", "value", "quality")
    ):
        readings[meter_id].append((start, value, quality))
    # Comparisons: the previous period of the same length and the same dates a year before.
    prev_from = _midnight(period_start - timedelta(days=days), zone)
    year_from = _midnight(_minus_year(period_start), zone)
    year_to = _midnight(_minus_year(period_end) + timedelta(days=1), zone)
    interval_meters = [
        m.pk for found in meters.values() for m in found if m.kind == MeterKind.INTERVAL
    ]
    counted = Q(value__gte=0)
    compare = {
        row["meter_id"]: row
        for row in Reading.objects.filter(meter_id__in=interval_meters)
        .filter(counted)
        .filter(
            Q(start__gte=prev_from, start__lt=start_utc)
            | Q(start__gte=year_from, start__lt=year_to)
        )
        .values("meter_id")
        .annotate(
            previous=Sum("value", filter=Q(start__gte=prev_from, start__lt=start_utc)),
            last_year=Sum("value", filter=Q(start__gte=year_from, start__lt=year_to)),
        )
    }
    first_month = _add_months(period_end.replace(day=1), 1 - TREND_MONTHS)
    months: dict[int, dict[date, Decimal]] = defaultdict(dict)
    for row in (
        Reading.objects.filter(
            meter_id__in=interval_meters,
            start__gte=_midnight(first_month, zone),
            start__lt=end_utc,
        )
        .filter(counted)
        .annotate(month=TruncMonth("start", tzinfo=zone))
        .values("meter_id", "month")
        .annotate(total=Sum("value"))
    ):
        months[row["meter_id"]][row["month"].date()] = row["total"]
    tariff_rows: dict[tuple[int, int | None], list[CustomerTariff]] = defaultdict(list)
    for held_tariff in (
        CustomerTariff.objects.filter(customer_id__in=customer_ids)
        .select_related("tariff")
        .prefetch_related("tariff__bands")
        .order_by("customer_id", "valid_from")
    ):
        tariff_rows[(held_tariff.customer_id, held_tariff.meter_id)].append(held_tariff)
    marketing_ok: dict[int, bool] = {}
    for customer_id, granted in (
        ConsentRecord.objects.filter(customer_id__in=customer_ids, category=Category.MARKETING)
        .order_by("customer_id", "-recorded_at", "-id")
        .values_list("customer_id", "granted")
    ):
        marketing_ok.setdefault(customer_id, granted)
    rule_set = published_rules()
    span = _Span(period_start, period_end, start_utc, end_utc, zone, rules)
    out = {}
    for customer_id in customer_ids:
        customer = customers.get(customer_id)
        outcome = Outcome(customer_id)
        out[customer_id] = outcome
        found = meters.get(customer_id)
        if customer is None or not found:
            outcome.held.append("no meter: the customer has no meter on a service point")
            continue
        parts = [
            _meter_part(
                meter,
                readings.get(meter.pk, []),
                tariff_rows.get((customer_id, meter.pk)) or tariff_rows[(customer_id, None)],
                span,
            )
            for meter in found
        ]
        several = len(parts) > 1
        for part in parts:
            prefix = f"{part.meter.serial}: " if several else ""
            outcome.held.extend(prefix + reason for reason in part.held)
        if outcome.held:
            continue
        inputs: dict[str, Any] = {
            "period": {"start": period_start.isoformat(), "end": period_end.isoformat()},
            "timezone": str(zone),
            "currency": "GBP",
            "recommendation_rules": rule_set.version if rule_set else None,
        }
        if several:
            inputs["meters"] = [part.inputs for part in parts]
        else:
            inputs.update(parts[0].inputs)
        try:
            result = billing.bill_compute(inputs)
        except billing.BillError as exc:
            outcome.held.append(f"bill: {exc}")
            continue
        bills = result["meters"] if several else [result]
        comparisons = [dict(compare.get(part.meter.pk, {})) for part in parts]
        supplies = [
            _supply_data(
                part,
                {**inputs, **part.inputs},
                bill,
                comparison,
                months.get(part.meter.pk, {}),
                first_month,
            )
            for part, bill, comparison in zip(parts, bills, comparisons, strict=True)
        ]
        metrics = [supply.pop("_metrics") for supply in supplies]
        recs = (
            _recommendations(
                rule_set.rules,
                parts=parts,
                metrics=metrics,
                comparisons=comparisons,
                language=customer.language if customer.language else "en",
                marketing_ok=marketing_ok.get(customer_id, False),
            )
            if rule_set
            else []
        )
        outcome.inputs = inputs
        outcome.result = result
        outcome.data = statement_data(
            customer=customer,
            inputs=inputs,
            result=result,
            supplies=supplies,
            recommendations=recs,
            document_date=document_date,
        )
    return out


def _recommendations(
    rules: list[dict],
    *,
    parts: list[_MeterPart],
    metrics: list[dict[str, Decimal | None]],
    comparisons: list[dict],
    language: str,
    marketing_ok: bool,
) -> list[dict[str, Any]]:
    """One meter: the rules judged on its metrics (the data's shape of old). Several: each rule
    judged on each meter and on the meters together, and each recommendation says where."""
    if len(parts) == 1:
        return recommendations.recommendations_for(
            rules=rules, metrics=metrics[0], language=language, marketing_ok=marketing_ok
        )
    return recommendations.recommendations_for_meters(
        rules=rules,
        meters=[(part.meter.serial, m) for part, m in zip(parts, metrics, strict=True)],
        total=_total_metrics(parts, metrics, comparisons),
        language=language,
        marketing_ok=marketing_ok,
    )


def _total_metrics(
    parts: list[_MeterPart], metrics: list[dict[str, Decimal | None]], comparisons: list[dict]
) -> dict[str, Decimal | None]:
    """The meters' use together: only when they measure in one unit (kWh and m³ do not add
    up), a change only when every meter has its figure to compare with. The other metrics
    describe one meter's profile or tariff and are absent in total."""
    total: dict[str, Decimal | None] = dict.fromkeys(recommendations.METRICS)
    if len({part.meter.unit for part in parts}) != 1:
        return total
    consumption = sum((m["consumption"] or Decimal(0) for m in metrics), Decimal(0))
    total["consumption"] = consumption
    for metric, key in (("yoy_change", "last_year"), ("previous_change", "previous")):
        before = [Decimal(c[key]) for c in comparisons if c.get(key) is not None]
        if len(before) == len(comparisons):
            total[metric] = _change(consumption, sum(before, Decimal(0)))
    return total


@dataclass(frozen=True)
class _Span:
    """The period being billed, in local dates and as UTC instants, with the checks' rules."""

    first: date
    last: date
    start_utc: datetime
    end_utc: datetime
    zone: ZoneInfo
    rules: validation.Rules


@dataclass
class _MeterPart:
    """One meter's share of a statement: its inputs (unit, tariffs, series or register), the
    validation's flags and estimated days, and why it is held if it is."""

    meter: Meter
    inputs: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    estimated_days: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)


def _meter_part(
    meter: Meter,
    history: list[tuple[datetime, Decimal | None, str]],
    tariff_rows: list[CustomerTariff],
    span: _Span,
) -> _MeterPart:
    part = _MeterPart(meter)
    tariffs = _tariff_inputs(tariff_rows, span.first, span.last)
    if not tariffs:
        part.held.append(f"no tariff: none applies in {span.first}-{span.last}")
        return part
    part.inputs = {"unit": meter.unit, "meter": meter.serial, "tariffs": tariffs}
    if meter.kind == MeterKind.INTERVAL:
        starts = validation.period_starts(span.start_utc, span.end_utc, meter.interval_minutes)
        checked = validation.interval_series_check(
            starts=starts,
            readings={s: (v, q) for s, v, q in history if s >= span.start_utc},
            profile=validation.usual_profile(history, span.zone),
            max_value=meter.max_interval_value,
            zone=span.zone,
            rules=span.rules,
        )
        part.held.extend(checked.held)
        part.flags = checked.flags
        part.inputs["series"] = {
            "first": span.start_utc.astimezone(span.zone).isoformat(),
            "minutes": meter.interval_minutes,
            "values": [str(v) for v in checked.values],
            "estimated": checked.estimated,
        }
        part.estimated_days = sorted(
            {starts[i].astimezone(span.zone).date().isoformat() for i in checked.estimated}
        )
        return part
    opening = closing = None
    for moment, value, quality in history:
        if quality == "missing" or value is None:
            continue
        if moment <= span.start_utc:
            opening = value
        if moment <= span.end_utc:
            closing = value
    consumption, part.flags, held = validation.register_consumption(
        opening=opening, closing=closing, digits=meter.register_digits
    )
    part.held.extend(held)
    if consumption is not None:
        part.inputs["register"] = {
            "opening": str(opening),
            "closing": str(closing),
            "consumption": str(consumption),
        }
    return part


def _daily(inputs: dict, zone: ZoneInfo) -> tuple[list[str], list[str]]:
    series = inputs.get("series")
    if not series:
        return [], []
    totals: dict[date, Decimal] = defaultdict(Decimal)
    for moment, value in zip(billing.interval_starts(series), series["values"], strict=True):
        totals[moment.astimezone(zone).date()] += Decimal(value)
    ordered = sorted(totals)
    return [d.isoformat() for d in ordered], [
        str(totals[d].quantize(billing.MILLI)) for d in ordered
    ]


def _decimal_or_none(value: Decimal | None) -> str | None:
    return None if value is None else str(Decimal(value).quantize(billing.MILLI))


def _supply_data(
    part: _MeterPart,
    inputs: dict,
    bill: dict,
    comparison: dict,
    months: dict[date, Decimal],
    first_month: date,
) -> dict[str, Any]:
    """What the statement says about one meter: its use and cost by band, its lines, the
    comparisons, its charts' data, its estimated reads (every figure a string). `_metrics`
    (taken out by the caller) are what the recommendation rules read."""
    zone = ZoneInfo(inputs["timezone"])
    metrics = _metrics(inputs, bill, zone, comparison)
    day_labels, day_values = _daily(inputs, zone)
    trend_months = [_add_months(first_month, n) for n in range(TREND_MONTHS)]
    meter = part.meter
    return {
        "meter": {"serial": meter.serial, "unit": meter.unit, "kind": meter.kind},
        "supply_address": meter.service_point.address or meter.service_point.code,
        "lines": bill["lines"],
        "vat_rounding": bill["vat_rounding"],
        "net": bill["net"],
        "vat": bill["vat"],
        "total": bill["total"],
        "consumption": bill["consumption"],
        "by_band": bill["by_band"],
        "comparison": {
            "previous": _decimal_or_none(comparison.get("previous")),
            "previous_change": _decimal_or_none(metrics["previous_change"]),
            "last_year": _decimal_or_none(comparison.get("last_year")),
            "last_year_change": _decimal_or_none(metrics["yoy_change"]),
        },
        "daily": {"days": day_labels, "values": day_values},
        "trend": {
            "months": [m.isoformat() for m in trend_months],
            "values": [
                str(months.get(m, Decimal(0)).quantize(billing.MILLI)) for m in trend_months
            ],
        },
        "estimated": {"intervals": bill["estimated_intervals"], "days": part.estimated_days},
        "register": inputs.get("register"),
        "flags": part.flags,
        "_metrics": metrics,
    }


def statement_data(
    *,
    customer: Customer,
    inputs: dict,
    result: dict,
    supplies: list[dict[str, Any]],
    recommendations: list[dict],
    document_date: date,
) -> dict[str, Any]:
    """The template's data: every figure as a string, so the data is exact JSON. One meter's
    statement has its figures at the top level; a statement of several has the totals there
    and each meter's figures under `meters`."""
    period_end = date.fromisoformat(inputs["period"]["end"])
    tariff_names: list[str] = []
    for line in result["lines"]:
        if line["tariff_name"] not in tariff_names:
            tariff_names.append(line["tariff_name"])
    common = {
        "account_number": customer.external_ref,
        "reference": f"ST-{period_end:%Y%m}-{customer.external_ref}",
        "document_date": document_date.isoformat(),
        "due_date": (document_date + timedelta(days=14)).isoformat(),
        "period": inputs["period"],
        "currency": result["currency"],
        "tariffs": tariff_names,
        "recommendations": recommendations,
    }
    if len(supplies) == 1:
        return {**common, **supplies[0]}
    days = sorted({day for supply in supplies for day in supply["estimated"]["days"]})
    return {
        **common,
        "supply_address": supplies[0]["supply_address"],
        "net": result["net"],
        "vat": result["vat"],
        "total": result["total"],
        "estimated": {"intervals": result["estimated_intervals"], "days": days},
        "meters": supplies,
    }
