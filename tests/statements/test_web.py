"""The operations screens and the run API; the recommendation rules' sign-off."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied

from ccm import approvals
from notifications.statements import recommendations, services
from notifications.statements.models import RecommendationRuleSet, RuleSetState
from tests.statements.test_runs import town  # noqa: F401


def test_operations_start_a_run_and_see_who_is_held_and_why(client, ops, town, sync_tasks):  # noqa: F811
    client.force_login(ops)
    # a period that ends before it starts is refused with the reason, not a 500
    bad = client.post("/statements/", {"period_start": "2026-01-31", "period_end": "2026-01-01"})
    assert bad.status_code == 400
    assert "period_end is before period_start" in bad.content.decode()
    response = sync_tasks(
        client.post, "/statements/", {"period_start": "2026-01-01", "period_end": "2026-01-31"}
    )
    assert response.status_code == 302
    page = client.get(response["Location"]).content.decode()
    assert "Completed" in page
    assert "gap: 48 intervals without a reading from 2026-01-15 00:00" in page
    assert "Flat (<code>flat</code>)" in page


def test_the_run_api_reports_and_refuses_a_move_the_state_does_not_allow(api, town, sync_tasks):  # noqa: F811
    created = sync_tasks(
        api.post,
        "/api/v1/statement-runs",
        {"period_start": "2026-01-01", "period_end": "2026-01-31"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    report = api.get(f"/api/v1/statement-runs/{created.json()['id']}").json()
    assert report["state"] == "completed"
    assert report["statements"]["handed"] == 2
    assert {h["customer"] for h in report["held"]} == {"LONG", "SPIKE"}
    refused = api.post(f"/api/v1/statement-runs/{report['id']}/pause")
    assert refused.status_code == 409
    assert "only a running run can be paused" in refused.json()["detail"]
    bad = api.post("/api/v1/statement-runs", {"period_start": "Jan"}, format="json")
    assert bad.status_code == 422


def test_rules_are_published_only_through_four_eyes_sign_off(author, reviewer, reviewer2):
    with pytest.raises(services.RunError, match=r"rules\[0\].when\[0\].metric"):
        services.rule_set_create(
            rules=[{"code": "x", "when": [{"metric": "mood", "op": ">", "value": 1}]}], by=author
        )
    first = services.rule_set_create(rules=recommendations.DEFAULT_RULES, by=author)
    approvals.approval_decide(
        approval=services.rule_set_submit(rule_set=first, by=author),
        by=reviewer,
        decision="approve",
    )
    # a reviewer who wrote the rules cannot publish them: another reviewer must
    second = services.rule_set_create(rules=recommendations.DEFAULT_RULES[:1], by=reviewer)
    approval = services.rule_set_submit(rule_set=second, by=reviewer)
    with pytest.raises(PermissionDenied):
        approvals.approval_decide(approval=approval, by=reviewer, decision="approve")
    assert RecommendationRuleSet.objects.get(version=2).state == RuleSetState.IN_REVIEW
    approvals.approval_decide(approval=approval, by=reviewer2, decision="approve")
    states = dict(RecommendationRuleSet.objects.values_list("version", "state"))
    assert states == {1: RuleSetState.RETIRED, 2: RuleSetState.PUBLISHED}


def test_a_marketing_recommendation_needs_consent():
    metrics = {"night_share": 0.6, "tariff_bands": 1, "baseload_per_day": 1, "yoy_change": None}
    from decimal import Decimal

    metrics = {k: None if v is None else Decimal(str(v)) for k, v in metrics.items()}
    rules = recommendations.DEFAULT_RULES
    without = recommendations.recommendations_for(
        rules=rules, metrics=metrics, language="de", marketing_ok=False
    )
    with_consent = recommendations.recommendations_for(
        rules=rules, metrics=metrics, language="de", marketing_ok=True
    )
    assert without == []
    assert [r["title"] for r in with_consent] == ["Ein Tarif mit Nachtstrom könnte günstiger sein"]
