"""The operations screens for statement runs: the list with a form to start a run, a run's
progress and report with pause/resume, and the held statements with their reasons (release
after the reads are fixed, or skip). Every write calls a service; a refusal is shown on the
page, never a 500."""

from __future__ import annotations

from datetime import date

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from ccm.forms import AccessibleForm
from notifications.campaigns.models import Segment
from notifications.statements import selectors, services
from notifications.statements.models import Statement, StatementRun

VIEW = "notifications.view_statementrun"
CHANGE = "notifications.change_statementrun"


def _needs(permission: str):
    def decorate(view):
        return login_required(permission_required(permission, raise_exception=True)(view))

    return decorate


class RunForm(AccessibleForm):
    period_start = forms.DateField(
        label="First day", error_messages={"required": "Give the period's first day."}
    )
    period_end = forms.DateField(
        label="Last day", error_messages={"required": "Give the period's last day."}
    )
    segment = forms.ModelChoiceField(
        queryset=Segment.objects.all(),
        required=False,
        empty_label="Everyone with readings in the period",
    )


@_needs(VIEW)
@require_http_methods(["GET", "POST"])
def run_list(request: HttpRequest) -> HttpResponse:
    form = RunForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if not request.user.has_perm(CHANGE):
            form.add_error(None, "Your role may not start statement runs.")
            status = 403
        elif form.is_valid():
            try:
                run = services.statement_run_create(
                    period_start=form.cleaned_data["period_start"],
                    period_end=form.cleaned_data["period_end"],
                    segment=form.cleaned_data["segment"],
                    by=request.user,
                )
                services.statement_run_start(run=run, by=request.user)
            except services.RunError as exc:
                form.add_error(None, str(exc))
                status = 400
            else:
                messages.success(request, "The run has started.")
                return redirect("statement-run", run.pk)
        else:
            status = 400
    runs = [selectors.run_summary(run) for run in StatementRun.objects.all()[:50]]
    return render(
        request,
        "statements/run_list.html",
        {"form": form, "runs": runs, "today": date.today()},
        status=status,
    )


def _detail(request: HttpRequest, run: StatementRun, *, error: str = "", status: int = 200):
    return render(
        request,
        "statements/run_detail.html",
        {"run": run, "report": selectors.run_report(run), "error": error},
        status=status,
    )


@_needs(VIEW)
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _detail(request, get_object_or_404(StatementRun, pk=pk))


ACTIONS = {
    "pause": services.statement_run_pause,
    "resume": services.statement_run_resume,
    "cancel": services.statement_run_cancel,
}


@_needs(VIEW)
@require_POST
def run_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    run = get_object_or_404(StatementRun, pk=pk)
    if action not in ACTIONS:
        return render(request, "404.html", status=404)
    if not request.user.has_perm(CHANGE):
        return _detail(request, run, error="Your role may not change statement runs.", status=403)
    try:
        ACTIONS[action](run=run, by=request.user)
    except services.RunError as exc:
        run.refresh_from_db()
        return _detail(request, run, error=str(exc), status=409)
    messages.success(request, f"{action.capitalize()}: done.")
    return redirect("statement-run", run.pk)


@_needs(VIEW)
@require_POST
def statement_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    statement = get_object_or_404(Statement, pk=pk)
    run = statement.run
    if action not in ("release", "skip"):
        return render(request, "404.html", status=404)
    if not request.user.has_perm(CHANGE):
        return _detail(request, run, error="Your role may not release statements.", status=403)
    try:
        if action == "release":
            statement = services.statement_release(statement=statement, by=request.user)
        else:
            reason = request.POST.get("reason", "").strip()
            if not reason:
                return _detail(request, run, error="Say why the statement is skipped.", status=400)
            statement = services.statement_skip(statement=statement, by=request.user, reason=reason)
    except services.RunError as exc:
        return _detail(request, run, error=str(exc), status=409)
    if statement.state == "held":
        messages.warning(request, f"Still held: {statement.reason}")
    else:
        messages.success(request, f"Statement {statement.pk}: {statement.state}.")
    return redirect("statement-run", run.pk)
