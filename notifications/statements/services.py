"""Statement runs: create, start, pause, resume, cancel, and the chunked work that computes,
holds, and hands statements to the one intake; releasing held statements; reprints."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.db import reset_queries, transaction
from django.urls import reverse
from django.utils import timezone

from ccm import approvals, audit
from ccm.models import ApprovalState
from ccm.tasks import enqueue
from documents import selectors as document_selectors
from documents import services as document_services
from notifications import signals
from notifications.models import Source
from notifications.pipeline import intake
from notifications.statements import assemble, billing, recommendations, selectors
from notifications.statements.models import (
    RecommendationRuleSet,
    RuleSetState,
    RunState,
    Statement,
    StatementRun,
    StatementState,
)

CHUNK = 100
MAX_PERIOD_DAYS = 92
TASK_BUDGET_SECONDS = 50.0
WORK_TASK = "notifications.statements.tasks.statement_run_work"
CLIENT = "statement_run"


class RunError(Exception):
    pass


def _locked(run: StatementRun) -> StatementRun:
    return StatementRun.objects.select_for_update().get(pk=run.pk)


@transaction.atomic
def statement_run_create(
    *, period_start: date, period_end: date, segment=None, by, template_code: str = ""
) -> StatementRun:
    if period_end < period_start:
        raise RunError("period_end is before period_start.")
    if (period_end - period_start).days + 1 > MAX_PERIOD_DAYS:
        raise RunError(f"A statement covers at most {MAX_PERIOD_DAYS} days.")
    run = StatementRun(
        period_start=period_start, period_end=period_end, segment=segment, created_by=by
    )
    if template_code:
        run.template_code = template_code
    run.save()
    audit.record(
        actor=by,
        action="statement_run.created",
        subject=run,
        after={"period": [str(period_start), str(period_end)], "segment": run.segment_id},
    )
    return run


@transaction.atomic
def statement_run_start(*, run: StatementRun, by) -> StatementRun:
    run = _locked(run)
    if run.state != RunState.CREATED:
        raise RunError(f"The run is {run.state}; only a new run can be started.")
    if document_selectors.version_for_sending(code=run.template_code) is None:
        raise RunError(f"Template {run.template_code!r} has no published version.")
    run.customer_count = selectors.run_customers(run).count()
    run.start(when=timezone.now())
    run.save()
    audit.record(
        actor=by,
        action="statement_run.started",
        subject=run,
        after={"customers": run.customer_count},
    )
    enqueue(WORK_TASK, run.pk)
    return run


@transaction.atomic
def statement_run_pause(
    *, run: StatementRun, by, reason: str = "paused by operations"
) -> StatementRun:
    run = _locked(run)
    if run.state != RunState.RUNNING:
        raise RunError(f"The run is {run.state}; only a running run can be paused.")
    run.pause(reason=reason)
    run.save()
    audit.record(actor=by, action="statement_run.paused", subject=run, after={"reason": reason})
    return run


@transaction.atomic
def statement_run_resume(*, run: StatementRun, by) -> StatementRun:
    run = _locked(run)
    if run.state != RunState.PAUSED:
        raise RunError(f"The run is {run.state}; only a paused run can be resumed.")
    run.resume()
    run.save()
    audit.record(actor=by, action="statement_run.resumed", subject=run)
    enqueue(WORK_TASK, run.pk)
    return run


@transaction.atomic
def statement_run_cancel(*, run: StatementRun, by, reason: str = "cancelled") -> StatementRun:
    run = _locked(run)
    if run.state not in (RunState.CREATED, RunState.PAUSED):
        raise RunError(f"The run is {run.state}; pause it before cancelling.")
    run.cancel(reason=reason)
    run.save()
    audit.record(actor=by, action="statement_run.cancelled", subject=run, after={"reason": reason})
    return run


@dataclass
class ChunkOutcome:
    computed: int = 0
    held: int = 0
    handed: int = 0
    more: bool = False


def _intake_item(run: StatementRun, statement: Statement) -> dict:
    return {
        "template": run.template_code,
        "customer": statement.customer_id,
        "data": statement.data,
        "idempotency_key": (
            f"statement:{statement.customer_id}:{statement.period_start}:{statement.period_end}"
        ),
        "source": Source.STATEMENT_RUN,
        "correlation_id": f"statement-run:{run.pk}",
    }


def _hand(run: StatementRun, statements: list[Statement], by) -> int:
    """Hand computed statements to the one intake; a refusal holds the statement with it."""
    if not statements:
        return 0
    results = intake.communications_intake(
        items=[_intake_item(run, s) for s in statements],
        client=CLIENT,
        by=by,
        source=Source.STATEMENT_RUN,
    )
    handed = 0
    for statement, result in zip(statements, results, strict=True):
        if result.accepted:
            statement.state = StatementState.HANDED
            statement.communication = result.communication
            handed += 1
        else:
            statement.state = StatementState.HELD
            messages = "; ".join(
                f"{e.get('field', '')}: {e.get('message', '')}" for e in result.errors
            )
            statement.reason = f"intake refused: {messages}"[:500]
    Statement.objects.bulk_update(statements, ["state", "communication", "reason"])
    return handed


def statement_run_chunk(run_id: int) -> ChunkOutcome:
    """Compute the next chunk of the run's customers and hand the good ones, in one
    transaction under the run's lock: a crash leaves nothing half done, a second worker waits,
    and the unique (customer, period) constraint means never two statements."""
    outcome = ChunkOutcome()
    with transaction.atomic():
        run = StatementRun.objects.select_for_update().get(pk=run_id)
        if run.state != RunState.RUNNING:
            return outcome
        ids = list(selectors.run_pending_customers(run)[:CHUNK])
        if not ids:
            run.complete(when=timezone.now())
            run.save()
            audit.record(
                actor=None,
                action="statement_run.completed",
                subject=run,
                after=selectors.run_counts(run),
            )
            return outcome
        computed = assemble.statements_assemble(
            customer_ids=ids,
            period_start=run.period_start,
            period_end=run.period_end,
            document_date=run.created_at.date(),
        )
        rows = []
        for customer_id in ids:
            result = computed[customer_id]
            held = bool(result.held)
            rows.append(
                Statement(
                    run=run,
                    customer_id=customer_id,
                    period_start=run.period_start,
                    period_end=run.period_end,
                    state=StatementState.HELD if held else StatementState.COMPUTED,
                    reason=result.reason,
                    tariff_codes=sorted({t["code"] for t in result.inputs.get("tariffs", [])}),
                    total=None if held else Decimal(result.result["total"]),
                    inputs=result.inputs,
                    result=result.result,
                    data=result.data,
                )
            )
            outcome.held += held
            outcome.computed += not held
        Statement.objects.bulk_create(rows)
        ready = [s for s in rows if s.state == StatementState.COMPUTED]
        outcome.handed = _hand(run, ready, run.created_by)
        StatementRun.objects.filter(pk=run.pk).update(last_chunk_at=timezone.now())
        outcome.more = True
    return outcome


def _forget_queries() -> None:
    """With DEBUG on, Django keeps the text of every SQL statement until the next request
    starts. Every task starts afresh (`ccm.tasks.task_context_enter`), but one task here works
    chunk after chunk for its budget, and a chunk's inserts carry its statements' inputs and
    data (2.3 MB of SQL): each chunk is forgotten as a task would be."""
    reset_queries()


def statement_run_work(run_id: int, *, budget: float | None = None) -> int:
    """Work through the run's chunks for up to `budget` seconds, then let the next task
    take over. Safe to run twice: the run's lock and the pending-customer query see to it."""
    deadline = time.monotonic() + (TASK_BUDGET_SECONDS if budget is None else budget)
    done = 0
    while True:
        outcome = statement_run_chunk(run_id)
        _forget_queries()
        done += outcome.computed + outcome.held
        if not outcome.more:
            return done
        if time.monotonic() >= deadline:
            with transaction.atomic():
                enqueue(WORK_TASK, run_id)
            return done


def runs_stalled() -> list[int]:
    """Running runs no chunk has touched for a while (their task died): to be restarted."""
    stale = timezone.now() - timedelta(seconds=max(TASK_BUDGET_SECONDS * 3, 180))
    running = StatementRun.objects.filter(state=RunState.RUNNING)
    return sorted(
        set(running.filter(last_chunk_at__lt=stale).values_list("pk", flat=True))
        | set(
            running.filter(last_chunk_at__isnull=True, started_at__lt=stale).values_list(
                "pk", flat=True
            )
        )
    )


@transaction.atomic
def statement_release(*, statement: Statement, by) -> Statement:
    """A reviewer looked at a held statement (the reads may have been corrected since): compute
    it again and hand it if it is clean now; otherwise it stays held with the new reason."""
    statement = Statement.objects.select_for_update().select_related("run").get(pk=statement.pk)
    if statement.state != StatementState.HELD:
        raise RunError(f"The statement is {statement.state}; only a held one can be released.")
    run = statement.run
    result = assemble.statements_assemble(
        customer_ids=[statement.customer_id],
        period_start=statement.period_start,
        period_end=statement.period_end,
        document_date=run.created_at.date(),
    )[statement.customer_id]
    statement.inputs, statement.result, statement.data = result.inputs, result.result, result.data
    statement.reason = result.reason
    statement.tariff_codes = sorted({t["code"] for t in result.inputs.get("tariffs", [])})
    if result.held:
        statement.save()
        audit.record(
            actor=by,
            action="statement.still_held",
            subject=statement,
            after={"reason": result.reason},
        )
        return statement
    statement.state = StatementState.COMPUTED
    statement.total = Decimal(result.result["total"])
    statement.save()
    _hand(run, [statement], by)
    audit.record(
        actor=by, action="statement.released", subject=statement, after={"state": statement.state}
    )
    return statement


@transaction.atomic
def statement_skip(*, statement: Statement, by, reason: str) -> Statement:
    statement = Statement.objects.select_for_update().get(pk=statement.pk)
    if statement.state != StatementState.HELD:
        raise RunError(f"The statement is {statement.state}; only a held one can be skipped.")
    statement.state = StatementState.SKIPPED
    statement.reason = f"skipped: {reason}"[:500]
    statement.save()
    audit.record(actor=by, action="statement.skipped", subject=statement, after={"reason": reason})
    return statement


class ReprintMismatch(Exception):
    pass


def statement_bill_check(statement: Statement) -> None:
    """Before a statement is reprinted: its bill computed again from the stored inputs must be
    the stored result, or ReprintMismatch says what differs. A copy then repeats figures the
    billing engine still stands by, not only the bytes that were archived."""
    again = billing.bill_compute(statement.inputs)
    if again != statement.result:
        differ = sorted(
            k for k in set(again) | set(statement.result) if again.get(k) != statement.result.get(k)
        )
        reason = (
            f"statement {statement.pk}: its stored readings no longer give its stored bill "
            f"(differs in {', '.join(differ)})"
        )
        # An alarm whoever asked for the copy (operations get an exception case: cases app).
        audit.record(
            actor=None,
            action="statement.bill_mismatch",
            subject=statement,
            after={"differs_in": differ, "computed": again},
        )
        communication = statement.communication
        signals.statement_bill_mismatch.send(
            sender=Statement,
            statement=statement,
            document=communication.document if communication is not None else None,
            reason=reason,
        )
        raise ReprintMismatch(reason)


def document_bill_check(document) -> None:
    """`statement_bill_check` for the statement `document` (an archived original) was issued
    for, if it is one; any other document passes. Every reprint calls it before the archive is
    regenerated (cases.requests.reprints)."""
    statement = Statement.objects.filter(communication__document=document).first()
    if statement is not None:
        statement_bill_check(statement)


def statement_reprint(*, statement: Statement, by):
    """Recompute the bill from the stored inputs (it must equal the stored result) and
    regenerate the archived PDF byte for byte; returns the stamped duplicate document."""
    statement_bill_check(statement)
    communication = statement.communication
    if communication is None or communication.document is None:
        raise RunError("The statement has no archived document yet.")
    _check, copy = document_services.document_regenerate(
        document=communication.document, by=by, duplicate=True
    )
    return copy


# -- recommendation rules: data, versioned, signed off ------------------------------------


class RulesInvalid(RunError):
    """The rules break the format: `errors` has one message per fault, each starting with
    where it is (`rules[2].when[0].value: a number`), so a screen can put it at its field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("The rules are invalid: " + "; ".join(errors))
        self.errors = errors


def _rules_checked(rules: list) -> None:
    errors = recommendations.rules_errors(rules)
    if errors:
        raise RulesInvalid(errors)


def rule_set_create(*, rules: list, by) -> RecommendationRuleSet:
    """A new draft version of the rules; refused with every fault when they are invalid."""
    _rules_checked(rules)
    with transaction.atomic():
        last = RecommendationRuleSet.objects.select_for_update().order_by("-version").first()
        rule_set = RecommendationRuleSet.objects.create(
            version=(last.version + 1) if last else 1, rules=rules, created_by=by
        )
        audit.record(
            actor=by,
            action="recommendation_rules.created",
            subject=rule_set,
            after={"rules": rules},
        )
    return rule_set


@transaction.atomic
def rule_set_draft_start(*, by) -> RecommendationRuleSet:
    """The draft to edit: the open one if there is one (one draft at a time, as a template
    has), otherwise a new version with the published version's rules (the latest version's
    when none is published, the defaults when there is none at all)."""
    # The newest version's lock first: two authors asking at once get the same draft.
    RecommendationRuleSet.objects.select_for_update().order_by("-version").first()
    existing = selectors.rule_set_open_draft()
    if existing is not None:
        return existing
    base = (
        RecommendationRuleSet.objects.filter(state=RuleSetState.PUBLISHED).first()
        or RecommendationRuleSet.objects.first()
    )
    return rule_set_create(rules=base.rules if base else recommendations.DEFAULT_RULES, by=by)


@transaction.atomic
def rule_set_update(*, rule_set: RecommendationRuleSet, rules: list, by) -> RecommendationRuleSet:
    """Store edited rules in a draft; refused with every fault (RulesInvalid) when they are
    invalid, and refused when the version is frozen (in review or later)."""
    rule_set = RecommendationRuleSet.objects.select_for_update().get(pk=rule_set.pk)
    if rule_set.state != RuleSetState.DRAFT:
        raise RunError(
            f"Rules v{rule_set.version} are {rule_set.state}; only a draft can be edited."
        )
    _rules_checked(rules)
    before = rule_set.rules
    rule_set.rules = rules
    rule_set.save(update_fields=["rules"])
    audit.record(
        actor=by,
        action="recommendation_rules.updated",
        subject=rule_set,
        before={"rules": before},
        after={"rules": rules},
    )
    return rule_set


@transaction.atomic
def rule_set_submit(*, rule_set: RecommendationRuleSet, by):
    rule_set = RecommendationRuleSet.objects.select_for_update().get(pk=rule_set.pk)
    if rule_set.state != RuleSetState.DRAFT:
        raise RunError(
            f"Rules v{rule_set.version} are {rule_set.state}; only a draft is submitted."
        )
    rule_set.submit()
    rule_set.save()
    audit.record(actor=by, action="recommendation_rules.submitted", subject=rule_set)
    return approvals.approval_request(
        subject=rule_set,
        requested_by=by,
        purpose="publish",
        summary=f"Recommendation rules v{rule_set.version}: {len(rule_set.rules)} rules",
    )


def _on_rules_decision(rule_set: RecommendationRuleSet, approval) -> None:
    rule_set = RecommendationRuleSet.objects.select_for_update().get(pk=rule_set.pk)
    if approval.state == ApprovalState.APPROVED:
        for old in RecommendationRuleSet.objects.select_for_update().filter(
            state=RuleSetState.PUBLISHED
        ):
            old.retire()
            old.save()
        rule_set.publish(when=timezone.now())
        action = "recommendation_rules.published"
    else:
        rule_set.send_back()
        action = f"recommendation_rules.{approval.state}"
    rule_set.save()
    audit.record(
        actor=approval.decided_by or approval.requested_by, action=action, subject=rule_set
    )


def register_approvable(*, proof) -> None:
    approvals.register(
        RecommendationRuleSet,
        author_of=lambda rule_set: rule_set.created_by,  # type: ignore[attr-defined]
        on_decision=_on_rules_decision,  # type: ignore[arg-type]
        review_url=lambda rule_set: reverse("rule-set", args=[rule_set.pk]),
        decided_url=lambda rule_set: reverse("rule-set", args=[rule_set.pk]),
        label="Recommendation rules",
        proof=proof,  # type: ignore[arg-type]
    )
