"""Recommendations from rules that are data: versioned, signed off, published like a template.

A rule set is a list of rules; a rule applies when all its conditions hold on the statement's
metrics. A marketing rule (an offer: another tariff) is shown only to a customer whose latest
marketing consent, on any channel, is a grant.

    {"code": "time_of_use", "marketing": true,
     "when": [{"metric": "night_share", "op": ">", "value": 0.4},
              {"metric": "tariff_bands", "op": "==", "value": 1}],
     "title": {"en": "…", "de": "…"}, "text": {"en": "…", "de": "…"}}
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

METRICS = {
    "night_share": "share of the period's consumption between 00:00 and 07:00 (0-1)",
    "baseload_per_day": "always-on use per day: the 10th percentile interval x intervals a day",
    "yoy_change": "change against the same period last year (0.2 = 20 % more); absent if unknown",
    "previous_change": "change against the previous period; absent if unknown",
    "consumption": "the period's consumption",
    "tariff_bands": "how many unit rates the current tariff has",
}
OPS = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
}

DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "code": "time_of_use",
        "marketing": True,
        "when": [
            {"metric": "night_share", "op": ">", "value": 0.4},
            {"metric": "tariff_bands", "op": "==", "value": 1},
        ],
        "title": {
            "en": "A time-of-use tariff could cost you less",
            "de": "Ein Tarif mit Nachtstrom könnte günstiger sein",
            "cy": "Gallai tariff amser defnydd gostio llai i chi",
        },
        "text": {
            "en": "Much of your electricity is used at night. On a day/night tariff night units "
            "are cheaper; ask us for a quote.",
            "de": "Sie verbrauchen viel Strom in der Nacht. Mit einem Tag-/Nachttarif ist "
            "Nachtstrom günstiger; fragen Sie uns nach einem Angebot.",
            "cy": "Rydych yn defnyddio llawer o drydan yn y nos. Ar dariff dydd/nos mae unedau "
            "nos yn rhatach; gofynnwch i ni am ddyfynbris.",
        },
    },
    {
        "code": "baseload",
        "marketing": False,
        "when": [{"metric": "baseload_per_day", "op": ">", "value": 6}],
        "title": {
            "en": "Check what stays on",
            "de": "Prüfen Sie, was ständig läuft",
            "cy": "Gwiriwch beth sy'n aros ymlaen",
        },
        "text": {
            "en": "Your home uses a lot even when it is quiet. An old fridge, a heater or a "
            "pump left on can cost more than you think.",
            "de": "Ihr Haushalt verbraucht auch in ruhigen Stunden viel. Ein alter Kühlschrank "
            "oder eine Heizung im Dauerbetrieb kostet mehr als gedacht.",
            "cy": "Mae eich cartref yn defnyddio llawer hyd yn oed pan fo'n dawel. Gall hen "
            "oergell neu wresogydd sydd ymlaen gostio mwy nag y tybiwch.",
        },
    },
    {
        "code": "usage_up",
        "marketing": False,
        "when": [{"metric": "yoy_change", "op": ">", "value": 0.2}],
        "title": {
            "en": "You used more than a year ago",
            "de": "Sie haben mehr verbraucht als vor einem Jahr",
            "cy": "Fe wnaethoch ddefnyddio mwy na blwyddyn yn ôl",
        },
        "text": {
            "en": "Turning the heating down by one degree and washing at 30 °C are two easy "
            "ways to use less.",
            "de": "Die Heizung um ein Grad senken und bei 30 °C waschen sind zwei einfache "
            "Wege, weniger zu verbrauchen.",
            "cy": "Mae troi'r gwres i lawr un radd a golchi ar 30 °C yn ddwy ffordd hawdd o "
            "ddefnyddio llai.",
        },
    },
]


def rules_errors(rules: Any) -> list[str]:
    """What is wrong with a rule set, one message per fault; empty when it is valid."""
    if not isinstance(rules, list):
        return ["rules: a list of rules"]
    errors: list[str] = []
    codes: set[str] = set()
    for index, rule in enumerate(rules):
        where = f"rules[{index}]"
        if not isinstance(rule, Mapping):
            errors.append(f"{where}: an object")
            continue
        code = rule.get("code")
        if not isinstance(code, str) or not code:
            errors.append(f"{where}.code: a name")
        elif code in codes:
            errors.append(f"{where}.code: {code!r} is used twice")
        else:
            codes.add(code)
        conditions = rule.get("when")
        if not isinstance(conditions, list) or not conditions:
            errors.append(f"{where}.when: a list of conditions")
            conditions = []
        for n, cond in enumerate(conditions):
            if not isinstance(cond, Mapping):
                errors.append(f"{where}.when[{n}]: an object")
                continue
            if cond.get("metric") not in METRICS:
                errors.append(f"{where}.when[{n}].metric: one of {', '.join(METRICS)}")
            if cond.get("op") not in OPS:
                errors.append(f"{where}.when[{n}].op: one of {' '.join(OPS)}")
            value = cond.get("value")
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                errors.append(f"{where}.when[{n}].value: a number")
        for part in ("title", "text"):
            texts = rule.get(part)
            if not isinstance(texts, Mapping) or not isinstance(texts.get("en"), str):
                errors.append(f"{where}.{part}: texts by language, at least 'en'")
        if not isinstance(rule.get("marketing", False), bool):
            errors.append(f"{where}.marketing: true or false")
    return errors


def _holds(rule: Mapping, metrics: Mapping[str, Decimal | None]) -> bool:
    """Whether every condition of `rule` holds on `metrics` (an absent metric holds none)."""
    for cond in rule["when"]:
        value = metrics.get(cond["metric"])
        if value is None or not OPS[cond["op"]](value, Decimal(str(cond["value"]))):
            return False
    return True


def _words(rule: Mapping, language: str) -> dict[str, str]:
    return {
        "code": rule["code"],
        "title": rule["title"].get(language) or rule["title"]["en"],
        "text": rule["text"].get(language) or rule["text"]["en"],
    }


def recommendations_for(
    *, rules: list[dict], metrics: Mapping[str, Decimal | None], language: str, marketing_ok: bool
) -> list[dict[str, str]]:
    """The rules that apply, in the rule set's order, in the customer's language."""
    return [
        _words(rule, language)
        for rule in rules
        if (marketing_ok or not rule.get("marketing")) and _holds(rule, metrics)
    ]


def recommendations_for_meters(
    *,
    rules: list[dict],
    meters: list[tuple[str, Mapping[str, Decimal | None]]],
    total: Mapping[str, Decimal | None],
    language: str,
    marketing_ok: bool,
) -> list[dict[str, Any]]:
    """A statement of several meters: each rule is judged on each meter's metrics (serial,
    metrics) and on the statement's total; a rule that holds anywhere is one recommendation
    that says where: `meters` (the serials it holds on) and `in_total` (it holds on the meters'
    use together)."""
    out: list[dict[str, Any]] = []
    for rule in rules:
        if rule.get("marketing") and not marketing_ok:
            continue
        held_on = [serial for serial, metrics in meters if _holds(rule, metrics)]
        in_total = _holds(rule, total)
        if held_on or in_total:
            out.append({**_words(rule, language), "meters": held_on, "in_total": in_total})
    return out
