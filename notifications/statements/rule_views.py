"""The screens of the recommendation rules, mounted at /statements/rules/: the versions with
their states, a new draft from the published version, the editor (one box per field of each
rule, every fault shown at its field), submitting for sign-off, and the proof the reviewer sees
on the kernel's review page (what changes against the published version).

The rules are checked by `recommendations.rules_errors` through the services, as the demo, the
benchmark and the admin create them; sign-off is the kernel's (`ccm.approvals`), so the
four-eyes rule is the one every approvable has. Approval publishes the version."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ccm import approvals
from ccm.approvals import Proof
from ccm.views import staff_only
from notifications.statements import recommendations, selectors, services
from notifications.statements.models import RecommendationRuleSet, RuleSetState

VIEW = "notifications.view_recommendationruleset"
WRITE = "notifications.change_recommendationruleset"
PROOF_TEMPLATE = "statements/rule_set_proof.html"
STATE_WORDS = {
    RuleSetState.DRAFT: "Draft",
    RuleSetState.IN_REVIEW: "In review",
    RuleSetState.PUBLISHED: "Published",
    RuleSetState.RETIRED: "Retired",
}
# Bounds on what a posted form may claim to hold (the rule set's own limits are the service's).
MAX_RULES = 50
MAX_CONDITIONS = 20
BLANK_CONDITIONS = 1


def _languages(rules: list) -> list[str]:
    found = {"en"}
    for rule in rules:
        for part in ("title", "text"):
            if isinstance(rule.get(part), Mapping):
                found.update(str(lang) for lang in rule[part])
    return sorted(found, key=lambda lang: (lang != "en", lang))


def _field(name: str, value: Any = "") -> dict[str, Any]:
    return {"id": name, "name": name, "value": value, "errors": []}


def _block(index: int, rule: Mapping, languages: list[str], blank_rows: int) -> dict[str, Any]:
    """One rule's boxes, holding `rule`'s values (stored, or as posted)."""
    prefix = f"rule-{index}-"
    conditions = list(rule.get("when") or [])
    conditions += [{}] * blank_rows
    titles = rule.get("title") or {}
    texts = rule.get("text") or {}
    return {
        "index": index,
        "prefix": prefix,
        "errors": [],
        "code": _field(prefix + "code", rule.get("code", "")),
        "marketing": _field(prefix + "marketing", bool(rule.get("marketing"))),
        "conditions": [
            {
                key: _field(f"{prefix}when-{n}-{key}", "" if value is None else value)
                for key, value in (
                    ("metric", cond.get("metric", "")),
                    ("op", cond.get("op", "")),
                    ("value", cond.get("value", "")),
                )
            }
            for n, cond in enumerate(conditions)
        ],
        "titles": [
            {"language": lang, **_field(f"{prefix}title-{lang}", titles.get(lang, ""))}
            for lang in languages
        ],
        "texts": [
            {"language": lang, **_field(f"{prefix}text-{lang}", texts.get(lang, ""))}
            for lang in languages
        ],
        "remove": False,
    }


def blocks_for(rules: list, languages: list[str]) -> list[dict[str, Any]]:
    """The editor's boxes for stored rules, with a blank condition row each and a blank rule
    at the end to add one."""
    blocks = [_block(n, rule, languages, BLANK_CONDITIONS) for n, rule in enumerate(rules)]
    blocks.append(_block(len(rules), {}, languages, 2))
    return blocks


def _bounded(value: str, most: int) -> int:
    try:
        return max(0, min(int(value), most))
    except ValueError:
        return 0


def _number(text: str) -> Any:
    """A condition's value as typed: a JSON number stays one; anything else stays the text,
    so that the rules' check names it (`…value: a number`) at its box."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else text


def blocks_posted(post: Mapping[str, str], languages: list[str]) -> list[dict[str, Any]]:
    """The editor's boxes as the author posted them (the blank rows included)."""
    blocks = []
    for index in range(_bounded(post.get("rule_count", "0"), MAX_RULES + 1)):
        prefix = f"rule-{index}-"
        rows = _bounded(post.get(prefix + "when_count", "0"), MAX_CONDITIONS + 2)
        rule = {
            "code": post.get(prefix + "code", "").strip(),
            "marketing": bool(post.get(prefix + "marketing")),
            "when": [
                {
                    key: post.get(f"{prefix}when-{n}-{key}", "").strip()
                    for key in ("metric", "op", "value")
                }
                for n in range(rows)
            ],
            "title": {lang: post.get(f"{prefix}title-{lang}", "").strip() for lang in languages},
            "text": {lang: post.get(f"{prefix}text-{lang}", "").strip() for lang in languages},
        }
        block = _block(index, rule, languages, 0)
        block["remove"] = bool(post.get(prefix + "remove"))
        blocks.append(block)
    return blocks


def rules_of(blocks: list[dict[str, Any]]) -> tuple[list[dict], list[tuple[dict, list[int]]]]:
    """The rules the boxes hold (removed and blank ones left out, blank condition rows and
    empty texts dropped) and, for each rule, its block and the rows its conditions came from."""
    rules: list[dict] = []
    where: list[tuple[dict, list[int]]] = []
    for block in blocks:
        if block["remove"]:
            continue
        rows, conditions = [], []
        for n, cond in enumerate(block["conditions"]):
            metric, op, value = (cond[k]["value"] for k in ("metric", "op", "value"))
            if not metric and value == "":
                continue
            rows.append(n)
            conditions.append({"metric": metric, "op": op, "value": _number(str(value))})
        titles = {t["language"]: t["value"] for t in block["titles"] if t["value"]}
        texts = {t["language"]: t["value"] for t in block["texts"] if t["value"]}
        code = block["code"]["value"]
        if not (code or conditions or titles or texts):
            continue
        rules.append(
            {
                "code": code,
                "marketing": block["marketing"]["value"],
                "when": conditions,
                "title": titles,
                "text": texts,
            }
        )
        where.append((block, rows))
    return rules, where


FAULT = re.compile(r"^rules\[(\d+)\](?:\.(\w+))?(?:\[(\d+)\])?(?:\.(\w+))?: (.*)$")


def faults_place(errors: list[str], where: list[tuple[dict, list[int]]]) -> list[dict]:
    """Put each fault of the rules' check at its box; returns the list for the page's summary
    (message and the id of the box it links to)."""
    summary = []
    for error in errors:
        found = FAULT.match(error)
        if found is None or int(found[1]) >= len(where):
            summary.append({"message": error, "id": ""})
            continue
        block, rows = where[int(found[1])]
        part, row, key, message = found[2], found[3], found[4], found[5]
        if part in ("code", "marketing"):
            field = block[part]
        elif part == "when" and block["conditions"]:
            condition = block["conditions"][rows[int(row)] if row is not None else 0]
            field = condition[key or "metric"]
        elif part in ("title", "text"):
            field = block[f"{part}s"][0]
        else:
            field = block["code"]
        field["errors"].append(message)
        # As the rule's legend numbers it: two rules may share a (faulty) code.
        code = block["code"]["value"]
        label = f"Rule {block['index'] + 1}" + (f" ({code})" if code else "")
        summary.append({"message": f"{label}: {message}", "id": field["id"]})
    return summary


def _rule_set(pk: int) -> RecommendationRuleSet:
    return get_object_or_404(RecommendationRuleSet.objects.select_related("created_by"), pk=pk)


@require_GET
@staff_only(VIEW)
def rule_set_list(request: HttpRequest) -> HttpResponse:
    rule_sets = list(RecommendationRuleSet.objects.select_related("created_by"))
    rows = [
        {
            "rule_set": rule_set,
            "state": STATE_WORDS.get(RuleSetState(rule_set.state), rule_set.state),
            "approval": approvals.pending_for(rule_set, purpose="publish")
            if rule_set.state == RuleSetState.IN_REVIEW
            else None,
        }
        for rule_set in rule_sets
    ]
    context = {
        "rows": rows,
        "draft": next((r for r in rule_sets if r.state == RuleSetState.DRAFT), None),
        "published": next((r for r in rule_sets if r.state == RuleSetState.PUBLISHED), None),
        "can_write": request.user.has_perm(WRITE),
    }
    return render(request, "statements/rule_sets.html", context)


@require_POST
@staff_only(WRITE)
def rule_set_draft_new(request: HttpRequest) -> HttpResponse:
    existing = selectors.rule_set_open_draft()
    rule_set = services.rule_set_draft_start(by=request.user)
    if existing is not None:
        messages.info(request, f"v{rule_set.version} is already a draft; carry on with it.")
    else:
        messages.success(request, f"Draft v{rule_set.version} created from the published rules.")
    return redirect("rule-set", rule_set.pk)


@require_http_methods(["GET", "POST"])
@staff_only(VIEW)
def rule_set_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """A version's rules: boxes to edit in a draft (for an author), read-only otherwise, and
    what the version changes against the published one."""
    rule_set = _rule_set(pk)
    editable = rule_set.state == RuleSetState.DRAFT and request.user.has_perm(WRITE)
    languages = _languages(rule_set.rules)
    blocks = (
        blocks_for(rule_set.rules, languages)
        if editable
        else [_block(n, rule, languages, 0) for n, rule in enumerate(rule_set.rules)]
    )
    faults: list[dict] = []
    status = 200
    if request.method == "POST":
        if not editable:
            faults = [{"message": _not_editable(rule_set), "id": ""}]
            status = 403 if rule_set.state == RuleSetState.DRAFT else 409
        else:
            blocks = blocks_posted(request.POST, languages)
            rules, where = rules_of(blocks)
            try:
                services.rule_set_update(rule_set=rule_set, rules=rules, by=request.user)
            except services.RulesInvalid as exc:
                faults, status = faults_place(exc.errors, where), 422
            except services.RunError as exc:
                faults, status = [{"message": str(exc), "id": ""}], 409
            else:
                messages.success(request, f"Draft v{rule_set.version} saved.")
                return redirect("rule-set", rule_set.pk)
            if not any(not b["remove"] and not b["code"]["value"] for b in blocks):
                blocks.append(_block(len(blocks), {}, languages, 2))
    context = {
        "rule_set": rule_set,
        "state": STATE_WORDS.get(RuleSetState(rule_set.state), rule_set.state),
        "editable": editable,
        "blocks": blocks,
        "faults": faults,
        "metrics": recommendations.METRICS,
        "ops": list(recommendations.OPS),
        "changes": selectors.rule_set_changes(rule_set),
        "approval": approvals.pending_for(rule_set, purpose="publish"),
        "can_write": request.user.has_perm(WRITE),
    }
    return render(request, "statements/rule_set.html", context, status=status)


def _not_editable(rule_set: RecommendationRuleSet) -> str:
    if rule_set.state == RuleSetState.DRAFT:
        return "Your role may not change recommendation rules."
    return (
        f"Rules v{rule_set.version} are {rule_set.state.replace('_', ' ')}: they are frozen. "
        "Start a new draft to change them."
    )


@require_POST
@staff_only(WRITE)
def rule_set_submit(request: HttpRequest, pk: int) -> HttpResponse:
    rule_set = _rule_set(pk)
    try:
        services.rule_set_submit(rule_set=rule_set, by=request.user)
    except (services.RunError, approvals.ApprovalConflict) as exc:
        messages.error(request, f"Not submitted: {exc}")
        return redirect("rule-set", rule_set.pk)
    messages.success(
        request,
        f"Rules v{rule_set.version} submitted for sign-off. A reviewer other than you decides; "
        "approving publishes them.",
    )
    return redirect("rule-sets")


def rule_set_proof(rule_set: RecommendationRuleSet) -> Proof:
    """What the reviewer sees before deciding: the changes against the published version and
    the rules as submitted."""
    return Proof(
        PROOF_TEMPLATE,
        {
            "rule_set": rule_set,
            "changes": selectors.rule_set_changes(rule_set),
            "rules_json": json.dumps(rule_set.rules, indent=2, sort_keys=True, ensure_ascii=False),
        },
    )
