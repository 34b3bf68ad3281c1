"""The bill for one customer and period, computed from stored inputs with Decimal only.

`bill_compute(inputs)` is a pure function of JSON-able inputs (amounts and quantities as strings),
so the inputs stored with a statement reproduce its result exactly, today or in ten years:

    {"period": {"start": "2026-01-01", "end": "2026-01-31"},      # inclusive dates, local
     "timezone": "Europe/London", "unit": "kWh", "currency": "GBP",
     "series": {"first": "2025-12-31T23:00:00+00:00", "minutes": 30,
                "values": ["0.235", …], "estimated": [17, 18]},  # every interval of the period
     "tariffs": [{"code", "name", "from": "2026-01-01", "to": "2026-02-01" | null,
                  "standing_charge": "0.4512", "vat_rate": "0.05", "vat_rounding": "line",
                  "bands": [{"name": "night", "start": "23:00", "end": "07:00", "rate": "0.12"}]}]}

A register meter's inputs carry `"register": {"consumption": "123.000"}` instead of a series;
its consumption is billed in the tariff's only band.

A statement of several meters (electricity and gas, or two electricity meters of one customer)
carries `"meters": [{"meter": "E-1", "unit", "series" | "register", "tariffs"}, …]` beside the
period, time zone and currency: each meter is billed on its own tariffs as above (its own
standing charge and VAT rounding, as a dual-fuel bill has one section a supply), and the
statement's net, VAT and total are the sums of the meters' bills.

Each interval is billed in the band and tariff in force at its start (local time), so a tariff
change on the 16th bills the 15th at the old rates and the 16th at the new; a band whose end is
before its start runs across midnight. Every line is rounded half-up to the penny; VAT is
rounded per line and summed ("line") or once on the net total per rate ("total")."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

PENNY = Decimal("0.01")
MILLI = Decimal("0.001")


class BillError(ValueError):
    """The inputs cannot be billed (no tariff on a day, a register on a time-of-use tariff)."""


def money(amount: Decimal) -> Decimal:
    return amount.quantize(PENNY, rounding=ROUND_HALF_UP)


def _time(text: str) -> time:
    return time.fromisoformat(text)


def band_contains(start: time, end: time, moment: time) -> bool:
    """[start, end) on a 24-hour clock; end before start wraps midnight; start == end is all day."""
    if start == end:
        return True
    if start < end:
        return start <= moment < end
    return moment >= start or moment < end


def _tariff_on(tariffs: list[dict], day: date) -> dict:
    for tariff in tariffs:
        start = date.fromisoformat(tariff["from"])
        end = date.fromisoformat(tariff["to"]) if tariff.get("to") else None
        if start <= day and (end is None or day < end):
            return tariff
    raise BillError(f"no tariff applies on {day.isoformat()}")


def _band_of(tariff: dict, moment: time) -> dict:
    for band in tariff["bands"]:
        if band_contains(_time(band["start"]), _time(band["end"]), moment):
            return band
    raise BillError(f"tariff {tariff['code']} has no band for {moment.isoformat('minutes')}")


def _days(period: dict) -> list[date]:
    first, last = date.fromisoformat(period["start"]), date.fromisoformat(period["end"])
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def interval_starts(series: dict) -> list[datetime]:
    first = datetime.fromisoformat(series["first"])
    step = timedelta(minutes=int(series["minutes"]))
    return [first + step * n for n in range(len(series["values"]))]


def _energy(inputs: dict, zone: ZoneInfo) -> dict[tuple[str, str], Decimal]:
    """Consumption per (tariff code, band name)."""
    tariffs = inputs["tariffs"]
    quantities: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    if "register" in inputs:
        tariff = _tariff_on(tariffs, date.fromisoformat(inputs["period"]["start"]))
        if len(tariff["bands"]) != 1:
            raise BillError("a register meter can only be billed on a single-rate tariff")
        quantities[(tariff["code"], tariff["bands"][0]["name"])] = Decimal(
            inputs["register"]["consumption"]
        )
        return quantities
    series = inputs["series"]
    for moment, value in zip(interval_starts(series), series["values"], strict=True):
        local = moment.astimezone(zone)
        tariff = _tariff_on(tariffs, local.date())
        band = _band_of(tariff, local.time())
        quantities[(tariff["code"], band["name"])] += Decimal(value)
    return quantities


def bill_compute(inputs: dict[str, Any]) -> dict[str, Any]:
    """The bill's lines and totals (all amounts as strings), from `inputs` alone."""
    if "meters" in inputs:
        return _meters_bill(inputs)
    return _meter_bill(inputs)


SHARED_INPUTS = ("period", "timezone", "currency")


def _meters_bill(inputs: dict[str, Any]) -> dict[str, Any]:
    """Each meter's bill, and the statement's totals as their sums. The lines are every
    meter's, each naming its meter, so a run's totals by tariff count them all."""
    shared = {key: inputs[key] for key in SHARED_INPUTS if key in inputs}
    bills = []
    for meter in inputs["meters"]:
        bill = _meter_bill({**shared, **meter})
        bill["meter"] = meter["meter"]
        bills.append(bill)
    net = sum((Decimal(b["net"]) for b in bills), Decimal(0))
    vat = sum((Decimal(b["vat"]) for b in bills), Decimal(0))
    return {
        "meters": bills,
        "lines": [{**line, "meter": b["meter"]} for b in bills for line in b["lines"]],
        "net": str(net),
        "vat": str(vat),
        "total": str(net + vat),
        "currency": inputs.get("currency", "GBP"),
        "days": max(b["days"] for b in bills),
        "estimated_intervals": sum(b["estimated_intervals"] for b in bills),
    }


def _meter_bill(inputs: dict[str, Any]) -> dict[str, Any]:
    """One meter's bill on its tariffs."""
    zone = ZoneInfo(inputs.get("timezone") or "UTC")
    tariffs = inputs["tariffs"]
    quantities = _energy(inputs, zone)
    days_on: dict[str, int] = defaultdict(int)
    for day in _days(inputs["period"]):
        days_on[_tariff_on(tariffs, day)["code"]] += 1
    unit = inputs.get("unit", "kWh")
    lines: list[dict[str, Any]] = []
    for tariff in tariffs:
        code = tariff["code"]
        if not days_on.get(code) and not any(c == code for c, _ in quantities):
            continue
        vat_rate = Decimal(tariff["vat_rate"])
        for band in tariff["bands"]:
            quantity = quantities.get((code, band["name"]), Decimal(0)).quantize(MILLI)
            rate = Decimal(band["rate"])
            lines.append(
                {
                    "kind": "energy",
                    "tariff": code,
                    "tariff_name": tariff["name"],
                    "band": band["name"],
                    "quantity": str(quantity),
                    "unit": unit,
                    "rate": str(rate),
                    "net": str(money(quantity * rate)),
                    "vat_rate": str(vat_rate),
                }
            )
        if days_on.get(code):
            rate = Decimal(tariff["standing_charge"])
            lines.append(
                {
                    "kind": "standing",
                    "tariff": code,
                    "tariff_name": tariff["name"],
                    "band": "",
                    "quantity": str(days_on[code]),
                    "unit": "days",
                    "rate": str(rate),
                    "net": str(money(days_on[code] * rate)),
                    "vat_rate": str(vat_rate),
                }
            )
    rounding = {t["vat_rounding"] for t in tariffs if t["code"] in {ln["tariff"] for ln in lines}}
    per_line = rounding != {"total"}
    for line in lines:
        line["vat"] = str(money(Decimal(line["net"]) * Decimal(line["vat_rate"])))
    net = sum((Decimal(ln["net"]) for ln in lines), Decimal(0))
    if per_line:
        vat = sum((Decimal(ln["vat"]) for ln in lines), Decimal(0))
    else:
        by_rate: dict[Decimal, Decimal] = defaultdict(Decimal)
        for line in lines:
            by_rate[Decimal(line["vat_rate"])] += Decimal(line["net"])
        vat = sum((money(amount * rate) for rate, amount in by_rate.items()), Decimal(0))
    by_band: dict[str, dict[str, Decimal]] = {}
    for line in lines:
        if line["kind"] == "energy":
            entry = by_band.setdefault(line["band"], {"quantity": Decimal(0), "net": Decimal(0)})
            entry["quantity"] += Decimal(line["quantity"])
            entry["net"] += Decimal(line["net"])
    consumption = sum((v["quantity"] for v in by_band.values()), Decimal(0))
    return {
        "lines": lines,
        "vat_rounding": "line" if per_line else "total",
        "net": str(net),
        "vat": str(vat),
        "total": str(net + vat),
        "consumption": str(consumption),
        "unit": unit,
        "currency": inputs.get("currency", "GBP"),
        "days": sum(days_on.values()),
        "by_band": [
            {"band": name, "quantity": str(v["quantity"]), "net": str(v["net"])}
            for name, v in by_band.items()
        ],
        "estimated_intervals": len(inputs.get("series", {}).get("estimated", [])),
    }
