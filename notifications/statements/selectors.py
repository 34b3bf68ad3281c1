"""Reads for statement runs: the customers a run covers, its progress and its report."""

from __future__ import annotations

import difflib
import json
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Exists, OuterRef, QuerySet, Sum

from notifications.campaigns.selectors import segment_customers
from notifications.models import Customer
from notifications.statements.assemble import _midnight, business_zone, published_rules
from notifications.statements.models import (
    Reading,
    RecommendationRuleSet,
    RuleSetState,
    Statement,
    StatementRun,
    StatementState,
)


def run_customers(run: StatementRun) -> QuerySet[Customer]:
    """The run's customers: its segment's, or everyone, with a reading in the period."""
    zone = business_zone()
    read = Reading.objects.filter(
        meter__service_point__customer=OuterRef("pk"),
        start__gte=_midnight(run.period_start, zone),
        start__lt=_midnight(run.period_end + timedelta(days=1), zone),
    )
    base = segment_customers(run.segment.definition) if run.segment else Customer.objects.all()
    return base.filter(Exists(read))


def run_pending_customers(run: StatementRun) -> QuerySet:
    """Customer ids of the run still without a statement for the period (from any run)."""
    done = Statement.objects.filter(
        customer=OuterRef("pk"), period_start=run.period_start, period_end=run.period_end
    )
    return run_customers(run).filter(~Exists(done)).order_by("pk").values_list("pk", flat=True)


def run_counts(run: StatementRun) -> dict[str, int]:
    counts = {state: 0 for state in StatementState.values}
    for row in run.statements.values("state").annotate(n=Count("pk")):
        counts[row["state"]] = row["n"]
    return counts


def run_summary(run: StatementRun) -> dict[str, Any]:
    counts = run_counts(run)
    done = sum(counts.values())
    return {
        "id": run.pk,
        "period_start": run.period_start.isoformat(),
        "period_end": run.period_end.isoformat(),
        "segment": run.segment_id,
        "state": run.state,
        "note": run.note,
        "customers": run.customer_count,
        "done": done,
        "statements": counts,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "completed_at": run.completed_at.isoformat() if run.completed_at else None,
    }


def run_totals_by_tariff(run: StatementRun) -> list[dict[str, Any]]:
    """Totals billed (handed statements) by tariff: net, VAT, total, consumption, count.
    A statement across a tariff change counts its lines under each tariff."""
    totals: dict[str, dict[str, Decimal]] = defaultdict(
        lambda: {"net": Decimal(0), "vat": Decimal(0), "quantity": Decimal(0), "lines": Decimal(0)}
    )
    names: dict[str, str] = {}
    counted: dict[str, set[int]] = defaultdict(set)
    for pk, result in (
        run.statements.filter(state__in=[StatementState.HANDED, StatementState.COMPUTED])
        .values_list("pk", "result")
        .iterator(chunk_size=2000)
    ):
        for line in result.get("lines", []):
            entry = totals[line["tariff"]]
            names[line["tariff"]] = line["tariff_name"]
            entry["net"] += Decimal(line["net"])
            entry["vat"] += Decimal(line["vat"])
            if line["kind"] == "energy":
                entry["quantity"] += Decimal(line["quantity"])
            counted[line["tariff"]].add(pk)
    return [
        {
            "tariff": code,
            "name": names[code],
            "statements": len(counted[code]),
            "consumption": str(v["quantity"]),
            "net": str(v["net"]),
            "vat": str(v["vat"]),
            # Line VAT summed: a tariff billed with VAT on the total may differ by pennies.
            "total": str(v["net"] + v["vat"]),
        }
        for code, v in sorted(totals.items())
    ]


def run_report(run: StatementRun) -> dict[str, Any]:
    report = run_summary(run)
    billed = run.statements.filter(state=StatementState.HANDED).aggregate(total=Sum("total"))
    report["total_billed"] = str(billed["total"] or Decimal("0.00"))
    report["by_tariff"] = run_totals_by_tariff(run)
    report["held"] = [
        {"statement": pk, "customer": ref, "reason": reason}
        for pk, ref, reason in run.statements.filter(state=StatementState.HELD)
        .order_by("customer_id")
        .values_list("pk", "customer__external_ref", "reason")[:1000]
    ]
    return report


def statement_runs_at_work(*, since):
    """The dashboard's progress source: runs under way, and those finished since `since`."""
    from django.db.models import Q
    from django.urls import reverse

    from notifications.progress import Work
    from notifications.statements.models import RunState

    finished = (RunState.COMPLETED, RunState.CANCELLED)
    runs = StatementRun.objects.filter(
        Q(state__in=(RunState.RUNNING, RunState.PAUSED))
        | Q(state=RunState.COMPLETED, completed_at__gte=since)
    ).order_by("-id")[:20]
    for run in runs:
        yield Work(
            kind="statement_run",
            key=f"statement_run:{run.pk}",
            label=f"Statement run {run.pk} ({run.period_start} to {run.period_end})",
            state=run.state,
            done=sum(run_counts(run).values()),
            total=run.customer_count,
            finished=run.state in finished,
            url=reverse("statement-run", args=[run.pk]),
            reference=f"statement-run:{run.pk}",
            started_at=run.started_at,
            permissions=("notifications.view_statementrun",),
        )


# -- recommendation rule sets ---------------------------------------------------------------


def rule_set_open_draft() -> RecommendationRuleSet | None:
    """The draft being written, if any: like a template, the rules have one at a time."""
    return RecommendationRuleSet.objects.filter(state=RuleSetState.DRAFT).first()


def _rules_text(rules: list) -> list[str]:
    return json.dumps(rules, indent=2, sort_keys=True, ensure_ascii=False).splitlines()


def rule_set_changes(rule_set: RecommendationRuleSet) -> dict[str, Any]:
    """What a version changes against the published one (none to compare with when it is the
    published one or nothing is published): the rules added, removed and changed by code, and
    the line diff of the two rule sets as JSON (each line marked +, - or blank)."""
    base = published_rules()
    if base is None or base.pk == rule_set.pk:
        return {"base": None, "added": [], "removed": [], "changed": [], "lines": []}
    before = {r.get("code"): r for r in base.rules}
    after = {r.get("code"): r for r in rule_set.rules}
    lines = [
        {"mark": line[:1], "text": line[1:]}
        for line in difflib.unified_diff(
            _rules_text(base.rules), _rules_text(rule_set.rules), lineterm="", n=3
        )
        if not line.startswith(("---", "+++"))
    ]
    return {
        "base": base,
        "added": [code for code in after if code not in before],
        "removed": [code for code in before if code not in after],
        "changed": [code for code in after if code in before and after[code] != before[code]],
        "lines": lines,
    }
