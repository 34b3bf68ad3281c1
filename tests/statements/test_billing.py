"""The bill, worked by hand: every expected figure below is written out in the comment above it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from notifications.statements.billing import BillError, bill_compute
from notifications.statements.validation import (
    Rules,
    interval_series_check,
    period_starts,
    register_consumption,
)


def tariff(code, *, bands, standing="0.50", vat="0.05", rounding="line", frm="2026-01-01", to=None):
    return {
        "code": code,
        "name": code.title(),
        "from": frm,
        "to": to,
        "standing_charge": standing,
        "vat_rate": vat,
        "vat_rounding": rounding,
        "bands": [{"name": n, "start": s, "end": e, "rate": r} for n, s, e, r in bands],
    }


FLAT = [("all day", "00:00", "00:00", "0.2450")]
DAY_NIGHT = [("day", "07:00", "23:00", "0.30"), ("night", "23:00", "07:00", "0.10")]


def inputs(values, *, tariffs, start="2026-01-01", end="2026-01-01", first=None, zone="UTC"):
    return {
        "period": {"start": start, "end": end},
        "timezone": zone,
        "unit": "kWh",
        "currency": "GBP",
        "series": {
            "first": first or f"{start}T00:00:00+00:00",
            "minutes": 30,
            "values": values,
            "estimated": [],
        },
        "tariffs": tariffs,
    }


def lines(result):
    return [
        (ln["tariff"], ln["band"], ln["quantity"], ln["net"], ln["vat"]) for ln in result["lines"]
    ]


def test_flat_rate_day():
    # 48 half-hours x 0.5 kWh = 24 kWh x £0.2450 = £5.88; standing £0.50 x 1 day.
    # VAT 5 %: 5.88 → 0.294 → £0.29; 0.50 → 0.025 → £0.03 (half up). Net 6.38, VAT 0.32.
    result = bill_compute(inputs(["0.5"] * 48, tariffs=[tariff("flat", bands=FLAT)]))
    assert lines(result) == [
        ("flat", "all day", "24.000", "5.88", "0.29"),
        ("flat", "", "1", "0.50", "0.03"),
    ]
    assert (result["net"], result["vat"], result["total"]) == ("6.38", "0.32", "6.70")


def test_time_of_use_band_across_midnight():
    # Night is 23:00-07:00: 00:00-06:30 (14 half-hours) and 23:00, 23:30 (2) = 16 kWh x 0.10
    # = £1.60; day 07:00-22:30 is 32 half-hours = 32 kWh x 0.30 = £9.60. Standing £0.50.
    # VAT per line: 0.48, 0.08, 0.025 → 0.03 = 0.59. Net 11.70, total 12.29.
    result = bill_compute(inputs(["1"] * 48, tariffs=[tariff("e7", bands=DAY_NIGHT)]))
    assert lines(result) == [
        ("e7", "day", "32.000", "9.60", "0.48"),
        ("e7", "night", "16.000", "1.60", "0.08"),
        ("e7", "", "1", "0.50", "0.03"),
    ]
    assert (result["net"], result["vat"], result["total"]) == ("11.70", "0.59", "12.29")


def test_bands_are_local_time():
    # 1 July in London is UTC+1: the interval starting 22:00 UTC is 23:00 local, night.
    # Only that one half-hour has use (2 kWh): it is billed at the night rate, 2 x 0.10.
    values = ["0"] * 48
    values[46] = "2"  # 22:00 UTC = 23:00 local (day in UTC, night in London)
    result = bill_compute(
        inputs(
            values,
            start="2026-07-01",
            end="2026-07-01",
            first="2026-06-30T23:00:00+00:00",
            zone="Europe/London",
            tariffs=[tariff("e7", bands=DAY_NIGHT, frm="2026-01-01")],
        )
    )
    assert lines(result)[1] == ("e7", "night", "2.000", "0.20", "0.01")
    assert lines(result)[0][2] == "0.000"


def test_tariff_change_mid_period():
    # Tariff A (0.20, standing 0.40) on 1 January, B (0.30, standing 0.50) from 2 January.
    # 12 kWh a day: A 12 x 0.20 = 2.40 + 0.40; B 12 x 0.30 = 3.60 + 0.50. Net 6.90.
    # VAT per line: 0.12, 0.02, 0.18, 0.025 → 0.03 = 0.35. Total 7.25.
    result = bill_compute(
        inputs(
            ["0.25"] * 96,
            start="2026-01-01",
            end="2026-01-02",
            tariffs=[
                tariff(
                    "a", bands=[("std", "00:00", "00:00", "0.20")], standing="0.40", to="2026-01-02"
                ),
                tariff("b", bands=[("std", "00:00", "00:00", "0.30")], frm="2026-01-02"),
            ],
        )
    )
    assert lines(result) == [
        ("a", "std", "12.000", "2.40", "0.12"),
        ("a", "", "1", "0.40", "0.02"),
        ("b", "std", "12.000", "3.60", "0.18"),
        ("b", "", "1", "0.50", "0.03"),
    ]
    assert (result["net"], result["vat"], result["total"]) == ("6.90", "0.35", "7.25")


THIRDS = [
    ("early", "00:00", "08:00", "0.0125"),
    ("mid", "08:00", "16:00", "0.0125"),
    ("late", "16:00", "00:00", "0.0125"),
]


@pytest.mark.parametrize(("rounding", "vat"), [("line", "0.03"), ("total", "0.02")])
def test_vat_rounding_per_line_and_on_the_total(rounding, vat):
    # Three bands of 8 kWh at 1.25p = £0.10 each; no standing charge. VAT 5 % of 0.10 is 0.005:
    # per line that rounds up to 0.01 three times (0.03); on the total, 5 % of 0.30 is 0.015
    # → 0.02. Both are lawful; the tariff says which one it uses.
    result = bill_compute(
        inputs(["0.5"] * 48, tariffs=[tariff("t", bands=THIRDS, standing="0", rounding=rounding)])
    )
    assert [ln["net"] for ln in result["lines"][:3]] == ["0.10", "0.10", "0.10"]
    assert (result["net"], result["vat"], result["vat_rounding"]) == ("0.30", vat, rounding)


def test_a_day_without_a_tariff_cannot_be_billed():
    with pytest.raises(BillError, match="no tariff applies on 2026-01-01"):
        bill_compute(inputs(["1"] * 48, tariffs=[tariff("x", bands=FLAT, frm="2026-01-02")]))


def test_register_rollover_counts_through_zero():
    # A 6-digit register from 999,990 to 25 has passed 999,999: 10 + 25 = 35 units.
    consumption, flags, held = register_consumption(
        opening=Decimal("999990"), closing=Decimal("25"), digits=6
    )
    assert consumption == Decimal("35")
    assert flags == ["rollover: register passed 999999"]
    assert held == []
    # Backwards from the middle of the dial is a bad read, not a rollover: held.
    consumption, _, held = register_consumption(
        opening=Decimal("5000"), closing=Decimal("4000"), digits=6
    )
    assert consumption is None
    assert held == ["negative: register went back from 5000 to 4000"]


def test_register_bill_is_flat():
    data = inputs([], tariffs=[tariff("flat", bands=FLAT)])
    del data["series"]
    data["register"] = {"consumption": "35"}
    # 35 x 0.2450 = 8.575 → £8.58 (half up).
    assert lines(bill_compute(data))[0] == ("flat", "all day", "35.000", "8.58", "0.43")


def _check(values, rules=None):
    zone = ZoneInfo("UTC")
    starts = period_starts(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), 30)
    readings = {s: (v, "actual") for s, v in zip(starts, values, strict=True) if v is not None}
    profile = {(s.hour, s.minute): Decimal("0.4") for s in starts}
    return interval_series_check(
        starts=starts,
        readings=readings,
        profile=profile,
        max_value=Decimal(10),
        zone=zone,
        rules=rules or Rules(),
    )


def test_short_gap_is_estimated_from_the_usual_profile_and_marked():
    values = [Decimal("0.5")] * 48
    values[10] = values[11] = None
    checked = _check(values)
    assert checked.held == []
    assert checked.estimated == [10, 11]
    assert checked.values[10] == Decimal("0.400")
    # 46 x 0.5 + 2 x 0.4 (estimated) = 23.8 kWh
    assert sum(checked.values) == Decimal("23.8")


def test_long_gap_holds_the_customer_with_the_reason():
    values = [Decimal("0.5")] * 48
    for i in range(20, 28):
        values[i] = None
    checked = _check(values)
    assert checked.held == ["gap: 8 intervals without a reading from 2026-01-01 10:00"]


def test_negative_impossible_and_spike_are_held():
    values = [Decimal("0.5")] * 48
    values[2] = Decimal("-0.1")
    values[3] = Decimal("11")
    values[4] = Decimal("4.5")  # > 10 x the usual 0.4
    checked = _check(values)
    assert checked.held == [
        "negative: -0.1 at 2026-01-01 01:00",
        "impossible: 11 at 2026-01-01 01:30",
        "spike: 4.5 at 2026-01-01 02:00 (usual 0.400, limit x10)",
    ]


def test_two_meters_each_billed_on_its_own_tariff_and_summed():
    # Electricity: 48 x 0.5 kWh = 24 kWh x £0.2450 = £5.88, standing £0.50; VAT per line
    # 0.294 → 0.29 and 0.025 → 0.03: net 6.38, VAT 0.32 (as the flat day above).
    # Gas: 48 x 0.25 m³ = 12 m³ x £0.0700 = £0.84, standing £0.30; VAT on the total:
    # 1.14 x 5 % = 0.057 → £0.06. Net 1.14. Statement: net 7.52, VAT 0.38, total 7.90.
    electricity = inputs(["0.5"] * 48, tariffs=[tariff("flat", bands=FLAT)])
    gas = inputs(
        ["0.25"] * 48,
        tariffs=[
            tariff(
                "gas",
                bands=[("all day", "00:00", "00:00", "0.0700")],
                standing="0.30",
                rounding="total",
            )
        ],
    )
    shared = {key: electricity[key] for key in ("period", "timezone", "currency")}
    result = bill_compute(
        {
            **shared,
            "meters": [
                {
                    "meter": "E-1",
                    "unit": "kWh",
                    **{k: electricity[k] for k in ("series", "tariffs")},
                },
                {"meter": "G-1", "unit": "m3", **{k: gas[k] for k in ("series", "tariffs")}},
            ],
        }
    )
    first, second = result["meters"]
    assert (first["meter"], first["net"], first["vat"], first["total"]) == (
        "E-1",
        "6.38",
        "0.32",
        "6.70",
    )
    assert (second["meter"], second["consumption"], second["unit"]) == ("G-1", "12.000", "m3")
    assert (second["net"], second["vat"], second["total"]) == ("1.14", "0.06", "1.20")
    assert (result["net"], result["vat"], result["total"]) == ("7.52", "0.38", "7.90")
    assert [(ln["meter"], ln["tariff"], ln["net"]) for ln in result["lines"]] == [
        ("E-1", "flat", "5.88"),
        ("E-1", "flat", "0.50"),
        ("G-1", "gas", "0.84"),
        ("G-1", "gas", "0.30"),
    ]
