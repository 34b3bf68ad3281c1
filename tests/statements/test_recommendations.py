"""Recommendations read every meter of a statement: each rule is judged on each meter and on
the meters' use together, and says which meter it is about. Worked by hand below."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal

import pypdf
import pytest

from ccm import approvals
from documents import services as documents
from documents.addressee import sample_addressee, with_addressee
from notifications.statements import assemble, recommendations, services
from notifications.statements.models import CustomerTariff, Meter
from tests.statements.conftest import half_hours, load, make_meter, make_tariff, put_on

JAN = {"period_start": date(2026, 1, 1), "period_end": date(2026, 1, 31)}


def _rule(code: str, *when: tuple[str, str, float]) -> dict:
    return {
        "code": code,
        "when": [{"metric": m, "op": op, "value": v} for m, op, v in when],
        "title": {"en": f"Title {code}"},
        "text": {"en": f"Text {code}"},
    }


RULES = [
    _rule("night", ("night_share", ">", 0.4), ("tariff_bands", "==", 1)),
    _rule("usage_up", ("yoy_change", ">", 0.2)),
    _rule("usage_down", ("yoy_change", "<", -0.1)),
    _rule("big", ("consumption", ">", 1000)),
]


@pytest.fixture
def rules(author, reviewer):
    rule_set = services.rule_set_create(rules=RULES, by=author)
    approval = services.rule_set_submit(rule_set=rule_set, by=author)
    approvals.approval_decide(approval=approval, by=reviewer, decision="approve")


def _night_heavy(n: int) -> str:
    # 1.0 kWh in each of the 14 half-hours from 00:00 to 07:00 (UTC in tests), 0.1 after.
    return "1.0" if n % 48 < 14 else "0.1"


@pytest.fixture
def two_electricity_meters(db, rules):
    """E-1 uses 14 x 1.0 + 34 x 0.1 = 17.4 kWh a day, most of it at night; E-2 0.5 every
    half-hour, 24 kWh a day. A year before, E-1 used 24 a day and E-2 12."""
    first = make_meter("TWO", serial="E-1")
    Meter.objects.create(serial="E-2", service_point=first.service_point)
    put_on(first.service_point.customer, make_tariff("flat"))
    load(half_hours(date(2025, 12, 1), 62, _night_heavy, serial="E-1"))
    load(half_hours(date(2025, 12, 1), 62, "0.5", serial="E-2"))
    load(half_hours(date(2025, 1, 1), 31, "0.5", serial="E-1"))
    load(half_hours(date(2025, 1, 1), 31, "0.25", serial="E-2"))
    return first.service_point.customer


def _assembled(customer):
    outcome = assemble.statements_assemble(
        customer_ids=[customer.pk], document_date=date(2026, 2, 2), **JAN
    )[customer.pk]
    assert outcome.held == []
    return outcome


def test_each_rule_is_judged_on_each_meter_and_on_the_meters_together(two_electricity_meters):
    outcome = _assembled(two_electricity_meters)
    # January: E-1 31 x 17.4 = 539.4 kWh, of it 31 x 14 = 434 at night: 0.805 of its use;
    # E-2 744 kWh, 31 x 7 = 217 at night: 0.292. A year before: E-1 744 (-27.5 %), E-2 372
    # (+100 %); together 1283.4 against 1116: +15 %.
    e1, e2 = outcome.data["meters"]
    assert (e1["consumption"], e2["consumption"]) == ("539.400", "744.000")
    assert (e1["comparison"]["last_year_change"], e2["comparison"]["last_year_change"]) == (
        "-0.275",
        "1.000",
    )
    found = {r["code"]: (r["meters"], r["in_total"]) for r in outcome.data["recommendations"]}
    assert found == {
        # high night use is E-1's only, and is not judged on the meters together
        "night": (["E-1"], False),
        # E-2 rose by 100 %, E-1 fell; together +15 % is not above 20 %
        "usage_up": (["E-2"], False),
        "usage_down": (["E-1"], False),
        # neither meter used 1,000 kWh; together they used 1,283.4
        "big": ([], True),
    }
    assert outcome.data["recommendations"][0]["title"] == "Title night"


def test_the_statement_says_which_meter_each_recommendation_is_about(
    two_electricity_meters, usage_statement
):
    data = _assembled(two_electricity_meters).data
    for language, words in [
        (
            "en",
            ["Title night (Meter E-1)", "Title usage_up (Meter E-2)", "All your meters together"],
        ),
        ("de", ["Title night (Zähler E-1)", "Alle Ihre Zähler zusammen"]),
    ]:
        document = documents.document_compose(version=usage_statement, data=data, language=language)
        pdf = pypdf.PdfReader(io.BytesIO(document.file.read()))
        text = "\n".join(page.extract_text() for page in pdf.pages)
        for where in [w.split(" (")[-1].rstrip(")") for w in words]:
            assert where in text, (language, where)
        (email,) = documents.text_channels_compose(
            version=usage_statement,
            language=language,
            items=[(with_addressee(data, sample_addressee(data)), ["email"])],
        )
        assert isinstance(email, dict), email
        for expected in words:
            assert expected in email["email"]["text"], (language, expected)


def test_night_use_is_judged_on_electricity_and_units_are_not_added(db, rules):
    # given an electricity and a gas meter using the same night-heavy profile
    electricity = make_meter("DUAL", serial="E-D")
    gas = Meter.objects.create(serial="G-D", service_point=electricity.service_point, unit="m3")
    customer = electricity.service_point.customer
    put_on(customer, make_tariff("flat"))
    CustomerTariff.objects.create(
        customer=customer, meter=gas, tariff=make_tariff("gas"), valid_from=date(2024, 1, 1)
    )
    for serial in ("E-D", "G-D"):
        load(half_hours(date(2025, 12, 1), 62, _night_heavy, serial=serial))
    # when the statement is assembled
    outcome = _assembled(customer)
    # then night use counts on the electricity meter only, and 539.4 kWh + 539.4 m³ are not
    # 1,078.8 of anything: "big" is judged on neither meter nor on the two together
    assert [(r["code"], r["meters"], r["in_total"]) for r in outcome.data["recommendations"]] == [
        ("night", ["E-D"], False)
    ]


def test_a_single_gas_meter_gets_no_night_tariff_advice(db, rules):
    gas = make_meter("GAS", serial="G-1", unit="m3")
    put_on(gas.service_point.customer, make_tariff("gas"))
    load(half_hours(date(2025, 12, 1), 62, _night_heavy, serial="G-1"))
    assert _assembled(gas.service_point.customer).data["recommendations"] == []


def test_a_single_meter_statement_keeps_its_recommendations_shape(db, rules):
    meter = make_meter("ONE", serial="E-9")
    put_on(meter.service_point.customer, make_tariff("flat"))
    load(half_hours(date(2025, 12, 1), 62, _night_heavy, serial="E-9"))
    data = _assembled(meter.service_point.customer).data
    assert "meters" not in data
    assert data["recommendations"] == [
        {"code": "night", "title": "Title night", "text": "Text night"}
    ]


def test_recommendations_for_meters_by_hand():
    metrics = {
        "one": {"night_share": Decimal("0.5"), "tariff_bands": Decimal(1)},
        "two": {"night_share": Decimal("0.45"), "tariff_bands": Decimal(2)},
    }
    marketing = {**RULES[0], "marketing": True}
    found = recommendations.recommendations_for_meters(
        rules=[RULES[0], marketing],
        meters=list(metrics.items()),
        total={"night_share": None},
        language="de",
        marketing_ok=False,
    )
    # "two" has two bands: only "one"; the marketing copy needs consent; German falls back
    assert found == [
        {
            "code": "night",
            "title": "Title night",
            "text": "Text night",
            "meters": ["one"],
            "in_total": False,
        }
    ]
