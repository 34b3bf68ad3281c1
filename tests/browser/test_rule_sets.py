"""Recommendation rules in a real browser: an author lowers a rule's threshold in a new draft and
submits it, a reviewer reads the change and approves it, and the next statement takes its
recommendations from the new version."""

from __future__ import annotations

import io
from datetime import date

import pypdf
import pytest
from playwright.sync_api import Page, expect

from ccm import approvals
from documents.bundle import read_folder
from documents.demo import LIBRARY
from notifications.customers import services as customer_services
from notifications.statements import recommendations, services
from notifications.statements.models import Statement
from tests.notifications.conftest import publish
from tests.statements.conftest import half_hours, load, make_meter, make_tariff, put_on


@pytest.fixture
def quiet_home(author, reviewer, ops):
    """The statement template and rules v1 published, and a customer whose always-on use is
    4.8 kWh a day (0.1 kWh every half-hour): under v1's baseload threshold of 6."""
    publish(read_folder(LIBRARY / "usage_statement"), author=author, reviewer=reviewer)
    rules = services.rule_set_create(rules=recommendations.DEFAULT_RULES, by=author)
    approval = services.rule_set_submit(rule_set=rules, by=author)
    approvals.approval_decide(approval=approval, by=reviewer, decision="approve")
    customer_services.customer_upsert(
        external_ref="QUIET",
        name="Quinn Quiet",
        emails=["quinn@example.org"],
        postal_address=["1 Mill Lane", "Leeds LS6 3QT"],
        by=ops,
    )
    meter = make_meter("QUIET")
    put_on(meter.service_point.customer, make_tariff("flat"))
    load(half_hours(date(2025, 12, 1), 62, "0.1", serial=meter.serial))
    return meter


def test_an_edited_rule_signed_off_is_used_by_the_next_statement(
    page: Page, login, author, reviewer, ops, quiet_home, sync_tasks
):
    # given the author opens the rules from their home page and starts a draft
    login(author)
    page.get_by_role("link", name="Recommendation rules").first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Recommendation rules")
    page.get_by_role("button", name="New draft from the published version").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Recommendation rules v2")
    baseload = page.get_by_role("group", name="Rule 2: baseload")
    value = baseload.get_by_label("Condition 1 value")
    expect(value).to_have_value("6")
    # a value that is not a number is refused at its box
    value.fill("six")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("alert")).to_contain_text("Rule 2 (baseload): a number")
    expect(baseload.get_by_label("Condition 1 value")).to_have_attribute("aria-invalid", "true")
    # when they lower the threshold to 4, save and submit
    baseload.get_by_label("Condition 1 value").fill("4")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("status")).to_contain_text("Draft v2 saved.")
    page.get_by_role("button", name="Submit v2 for sign-off").click()
    expect(page.get_by_role("status")).to_contain_text("Rules v2 submitted for sign-off")
    expect(page.get_by_role("row").filter(has_text="v2")).to_contain_text("In review")
    page.get_by_role("button", name=f"Sign out {author.username}").click()

    # then a reviewer finds it, sees the change against v1 and approves it
    login(reviewer)
    page.goto("/statements/rules/")
    page.get_by_role("link", name="Review v2").click()
    expect(page.locator("#rule-changes")).to_contain_text("Changed: baseload")
    expect(page.locator("#rule-diff ins")).to_have_text('+        "value": 4')
    expect(page.locator("#rule-diff del")).to_have_text('-        "value": 6')
    page.get_by_role("radio", name="Approve").check()
    page.get_by_role("button", name="Record decision").click()
    expect(page.get_by_role("status")).to_contain_text("Approved: Recommendation rules v2")

    # and the statement composed afterwards recommends checking what stays on (4.8 > 4)
    run = services.statement_run_create(
        period_start=date(2026, 1, 1), period_end=date(2026, 1, 31), by=ops
    )
    sync_tasks(services.statement_run_start, run=run, by=ops)
    statement = Statement.objects.get(customer=quiet_home.service_point.customer)
    assert statement.inputs["recommendation_rules"] == 2
    assert [r["code"] for r in statement.data["recommendations"]] == ["baseload"]
    document = statement.communication.document
    text = "\n".join(
        p.extract_text() for p in pypdf.PdfReader(io.BytesIO(document.file.read())).pages
    )
    assert "Check what stays on" in text
