"""The recommendation rules' screens: the versions, a draft from the published rules, the
editor with every fault at its box, submitting, the reviewer's diff and decision through the
kernel's sign-off (four-eyes), the roles, and frozen versions refused."""

from __future__ import annotations

import copy
import re

import pytest
from django.contrib.auth.models import Group

from ccm import approvals
from ccm.models import Approval, ApprovalState
from ccm.roles import Role
from notifications.statements import recommendations, services
from notifications.statements.models import RecommendationRuleSet, RuleSetState

LANGUAGES = ["en", "cy", "de"]


def form_of(rules: list[dict], *, blank_rule: bool = True) -> dict[str, str]:
    """What the editor posts for `rules`, as a browser fills its boxes."""
    data: dict[str, str] = {}
    blocks = [*rules, {}] if blank_rule else list(rules)
    data["rule_count"] = str(len(blocks))
    for i, rule in enumerate(blocks):
        prefix = f"rule-{i}-"
        data[prefix + "code"] = rule.get("code", "")
        if rule.get("marketing"):
            data[prefix + "marketing"] = "1"
        conditions = rule.get("when", [])
        data[prefix + "when_count"] = str(len(conditions) + 1)
        for n, cond in enumerate([*conditions, {"op": ">"}]):
            data[f"{prefix}when-{n}-metric"] = cond.get("metric", "")
            data[f"{prefix}when-{n}-op"] = cond.get("op", ">")
            data[f"{prefix}when-{n}-value"] = str(cond.get("value", ""))
        for lang in LANGUAGES:
            data[f"{prefix}title-{lang}"] = rule.get("title", {}).get(lang, "")
            data[f"{prefix}text-{lang}"] = rule.get("text", {}).get(lang, "")
    return data


@pytest.fixture
def published(author, reviewer):
    rule_set = services.rule_set_create(rules=recommendations.DEFAULT_RULES, by=author)
    approvals.approval_decide(
        approval=services.rule_set_submit(rule_set=rule_set, by=author),
        by=reviewer,
        decision="approve",
    )
    rule_set.refresh_from_db()
    return rule_set


def _draft(client, author):
    client.force_login(author)
    response = client.post("/statements/rules/draft/")
    assert response.status_code == 302
    return RecommendationRuleSet.objects.get(state=RuleSetState.DRAFT), response["Location"]


def test_the_list_shows_every_version_with_its_state(client, author, published):
    client.force_login(author)
    page = client.get("/statements/rules/").content.decode()
    assert re.search(r">v1</a></th>\s*<td>Published</td>\s*<td>3</td>", page)
    assert "New draft from the published version" in page


def test_an_author_starts_a_draft_from_the_published_rules_edits_a_rule_and_submits(
    client, author, published
):
    # given a draft from the published v1
    draft, location = _draft(client, author)
    assert (draft.version, draft.rules) == (2, published.rules)
    page = client.get(location).content.decode()
    assert 'name="rule-1-when-0-value" value="6"' in page
    # a second "new draft" goes back to the open one instead of making v3
    again = client.post("/statements/rules/draft/")
    assert again["Location"] == location
    assert RecommendationRuleSet.objects.count() == 2
    # when the author lowers the baseload threshold and adds a rule
    rules = copy.deepcopy(published.rules)
    rules[1]["when"][0]["value"] = 4
    added = {
        "code": "winter",
        "when": [{"metric": "consumption", "op": ">=", "value": 900}],
        "title": {"en": "A big month"},
        "text": {"en": "Most homes use less."},
    }
    saved = client.post(location, form_of([*rules, added]))
    # then the draft holds exactly that
    assert saved.status_code == 302
    draft.refresh_from_db()
    assert draft.rules[1]["when"] == [{"metric": "baseload_per_day", "op": ">", "value": 4}]
    assert draft.rules[3] == {**added, "marketing": False}
    assert draft.rules[0] == published.rules[0]
    # when they submit it
    submitted = client.post(f"/statements/rules/{draft.pk}/submit/")
    # then it is frozen in review, with a pending sign-off naming it
    assert submitted.status_code == 302
    draft.refresh_from_db()
    assert draft.state == RuleSetState.IN_REVIEW
    approval = approvals.pending_for(draft, purpose="publish")
    assert approval is not None
    assert (approval.author, approval.summary) == (author, "Recommendation rules v2: 4 rules")


def test_bad_rules_are_shown_at_their_box_and_nothing_is_saved(client, author, published):
    draft, location = _draft(client, author)
    rules = copy.deepcopy(published.rules)
    rules[1]["when"][0]["value"] = "lots"
    rules[2]["code"] = "time_of_use"  # the code of rule 0 again
    rules[2]["title"] = {"de": "Nur Deutsch"}
    response = client.post(location, form_of(rules))
    assert response.status_code == 422
    page = response.content.decode()
    # each fault is in the summary, linked to its box, and beside the box
    assert '<a href="#rule-1-when-0-value">Rule 2 (baseload): a number</a>' in page
    twice = "Rule 3 (time_of_use): &#x27;time_of_use&#x27; is used twice"
    assert f'<a href="#rule-2-code">{twice}</a>' in page
    assert '<a href="#rule-2-title-en">' in page
    assert re.search(
        r'id="rule-1-when-0-value-error"><span class="visually-hidden">Error:</span> a number',
        page,
    )
    assert re.search(r'id="rule-1-when-0-value" name="[^"]+" value="lots"[^>]*aria-invalid', page)
    # what was typed is kept in the boxes; nothing was stored
    assert 'value="Nur Deutsch"' in page
    draft.refresh_from_db()
    assert draft.rules == published.rules


def test_a_condition_needs_a_finite_number(client, author, published):
    _, location = _draft(client, author)
    rules = copy.deepcopy(published.rules)
    rules[2]["when"][0]["value"] = "NaN"
    response = client.post(location, form_of(rules))
    assert response.status_code == 422
    page = response.content.decode()
    assert '<a href="#rule-2-when-0-value">Rule 3 (usage_up): a number</a>' in page
    assert recommendations.rules_errors(
        [{**rules[0], "when": [{"metric": "consumption", "op": ">", "value": float("inf")}]}]
    ) == ["rules[0].when[0].value: a number"]


def test_a_rule_is_removed_and_a_blank_new_rule_is_ignored(client, author, published):
    draft, location = _draft(client, author)
    data = form_of(published.rules)
    data["rule-0-remove"] = "1"
    assert client.post(location, data).status_code == 302
    draft.refresh_from_db()
    assert [r["code"] for r in draft.rules] == ["baseload", "usage_up"]


def test_a_frozen_version_is_not_edited(client, author, published):
    client.force_login(author)
    response = client.post(f"/statements/rules/{published.pk}/", form_of(published.rules))
    assert response.status_code == 409
    assert "are published: they are frozen" in response.content.decode()
    # and a version in review is not submitted twice
    draft, location = _draft(client, author)
    client.post(f"/statements/rules/{draft.pk}/submit/")
    assert client.post(location, form_of(published.rules)).status_code == 409
    again = client.post(f"/statements/rules/{draft.pk}/submit/", follow=True)
    assert "Not submitted: Rules v2 are in_review; only a draft is submitted." in (
        again.content.decode()
    )
    assert Approval.objects.filter(state=ApprovalState.PENDING).count() == 1


def test_each_role_may_do_what_the_templates_screens_let_it(
    client, author, reviewer, agent, ops, published
):
    draft = services.rule_set_create(rules=published.rules, by=author)
    client.force_login(agent)
    assert client.get("/statements/rules/").status_code == 403
    for viewer in (reviewer, ops):
        client.force_login(viewer)
        page = client.get("/statements/rules/")
        assert page.status_code == 200
        assert "Edit and submit" not in page.content.decode()
        assert client.post("/statements/rules/draft/").status_code == 403
        assert client.post(f"/statements/rules/{draft.pk}/submit/").status_code == 403
        refused = client.post(f"/statements/rules/{draft.pk}/", form_of([]))
        assert refused.status_code == 403
        assert "may not change recommendation rules" in refused.content.decode()
    draft.refresh_from_db()
    assert (draft.state, draft.rules) == (RuleSetState.DRAFT, published.rules)


def test_the_reviewer_sees_the_diff_and_the_author_cannot_approve_their_own(
    client, author, reviewer, published
):
    # given the author (who also holds the reviewer role) submits a lower baseload threshold
    author.groups.add(Group.objects.get(name=Role.COMPLIANCE_REVIEWER))
    draft, location = _draft(client, author)
    rules = copy.deepcopy(published.rules)
    rules[1]["when"][0]["value"] = 4
    client.post(location, form_of(rules))
    client.post(f"/statements/rules/{draft.pk}/submit/")
    approval = approvals.pending_for(draft, purpose="publish")
    # when the author tries to approve it on the review page
    refused = client.post(f"/review/{approval.pk}/", {"decision": "approve", "comment": ""})
    # then the four-eyes rule refuses it and nothing is published
    assert refused.status_code == 403
    assert "Your decision was not recorded" in refused.content.decode()
    draft.refresh_from_db()
    assert draft.state == RuleSetState.IN_REVIEW
    # when another reviewer opens it, they see what changes against v1
    client.force_login(reviewer)
    listed = client.get("/statements/rules/").content.decode()
    assert f'href="/review/{approval.pk}/">Review v2</a>' in listed
    page = client.get(f"/review/{approval.pk}/").content.decode()
    assert "Changes against the published v1" in page
    assert "Changed: <code>baseload</code>" in page
    assert "<del>-        &quot;value&quot;: 6</del>" in page
    assert "<ins>+        &quot;value&quot;: 4</ins>" in page
    # and asks for changes: the author gets a draft back
    client.post(f"/review/{approval.pk}/", {"decision": "request_changes", "comment": "Say why 4."})
    draft.refresh_from_db()
    assert draft.state == RuleSetState.DRAFT
    # the author edits again and resubmits; the reviewer approves: v2 is published, v1 retired
    client.force_login(author)
    rules[1]["when"][0]["value"] = 5
    assert client.post(location, form_of(rules)).status_code == 302
    client.post(f"/statements/rules/{draft.pk}/submit/")
    client.force_login(reviewer)
    second = approvals.pending_for(draft, purpose="publish")
    decided = client.post(f"/review/{second.pk}/", {"decision": "approve", "comment": ""})
    assert decided.status_code == 302
    states = dict(RecommendationRuleSet.objects.values_list("version", "state"))
    assert states == {1: RuleSetState.RETIRED, 2: RuleSetState.PUBLISHED}
    assert RecommendationRuleSet.objects.get(version=2).rules[1]["when"][0]["value"] == 5
    page = client.get(f"/statements/rules/{draft.pk}/").content.decode()
    assert "Published" in page
    assert "nothing to compare with" in page


def test_with_no_rules_yet_the_first_draft_holds_the_defaults(client, author):
    client.force_login(author)
    page = client.get("/statements/rules/").content.decode()
    assert "No version is published: statements have no recommendations." in page
    assert "No rule set yet." in page
    draft, _ = _draft(client, author)
    assert (draft.version, draft.rules) == (1, recommendations.DEFAULT_RULES)
