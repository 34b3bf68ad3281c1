"""The reviewer's sign-off screens: one queue over every approvable kind, and one review page per
approval that shows the proof its app registered and records the decision.

Kernel-level on purpose: it knows approvables only through `ccm.approvals`' registry, so a kind
registered tomorrow (reprint requests) appears in the queue without a change here.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET, require_http_methods

from ccm import approvals, selectors
from ccm.forms import DecisionForm
from ccm.lists import CountLimitedPaginator
from ccm.models import Approval, ApprovalState

DECIDE_PERMISSION = "ccm.decide_approval"
QUEUE_PAGE_SIZE = 50

# The headers of an untrusted HTML rendition (an email) shown in a sandboxed frame: it may load
# nothing from anywhere, so a proof cannot beacon out or reach the back-office.
SANDBOX_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def sandboxed_html(html: str) -> HttpResponse:
    response = HttpResponse(html)
    response["Content-Security-Policy"] = SANDBOX_CSP
    return response


def _reviewers_only(view):
    # Signed-out users go to the login form; signed-in users without the role get a 403 page.
    return login_required(permission_required(DECIDE_PERMISSION, raise_exception=True)(view))


def _is_own(approval: Approval, user) -> bool:
    return user.pk in {approval.requested_by_id, approval.author_id}


@require_GET
@_reviewers_only
def queue(request: HttpRequest) -> HttpResponse:
    kinds = approvals.kinds()
    kind = request.GET.get("kind", "")
    error = ""
    if kind and kind not in {k.kind for k in kinds}:
        error = f"There is no kind {kind!r} to filter by; choose one from the list."
        kind = ""
    page = CountLimitedPaginator(selectors.approval_queue(kind=kind), QUEUE_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    counts = selectors.approval_queue_counts()
    rows = [
        {
            "approval": approval,
            "title": _title(approval),
            "label": _label(approval),
            "own": _is_own(approval, request.user),
        }
        for approval in page
    ]
    context = {
        "rows": rows,
        "page": page,
        "kind": kind,
        "kinds": [
            {"kind": k.kind, "label": k.label, "count": counts.get(k.kind, 0)} for k in kinds
        ],
        "total": sum(counts.values()),
        "error": error,
    }
    return render(request, "review/queue.html", context, status=400 if error else 200)


@require_http_methods(["GET", "POST"])
@_reviewers_only
def approval_review(request: HttpRequest, pk: int) -> HttpResponse:
    approval = get_object_or_404(
        Approval.objects.select_related("subject_type", "requested_by", "author", "decided_by"),
        pk=pk,
    )
    form = DecisionForm(request.POST or None)
    error, status = "", 200
    if request.method == "POST":
        if approval.subject is None:
            error, status = "Your decision was not recorded: its subject no longer exists.", 409
        elif not form.is_valid():
            error, status = "Your decision was not recorded: correct the form below.", 400
        else:
            try:
                decided = approvals.approval_decide(
                    approval=approval,
                    by=request.user,
                    decision=form.cleaned_data["decision"],
                    comment=form.cleaned_data["comment"],
                )
            except PermissionDenied as exc:
                error, status = f"Your decision was not recorded. {exc}", 403
            except approvals.ApprovalConflict as exc:
                error, status = f"Your decision was not recorded. {exc}", 409
            else:
                outcome = decided.state.replace("_", " ").capitalize()
                messages.success(request, f"{outcome}: {_title(decided)}. Recorded.")
                return redirect("review-queue")
            approval.refresh_from_db()
    proof = approvals.proof_for(approval)
    subject_missing = approval.subject is None
    context = {
        "approval": approval,
        "title": _title(approval),
        "label": _label(approval),
        # Nothing to decide on once the subject is gone; the approval stays as the record.
        "pending": approval.state == ApprovalState.PENDING and not subject_missing,
        "own": _is_own(approval, request.user),
        "form": form,
        "error": error,
        "review_url": approvals.review_url_for(approval),
        # Rendered with the app's own (autoescaping) template: the kernel knows nothing of it.
        "proof": render_to_string(proof.template, proof.context, request) if proof else "",
        "subject_missing": subject_missing,
    }
    return render(request, "review/approval.html", context, status=status)


def _label(approval: Approval) -> str:
    approvable = approvals.approvable_for(approval)
    return approvable.label if approvable else str(approval.subject_type.name)


def _title(approval: Approval) -> str:
    return approval.summary or f"{approval.subject_type.name} {approval.subject_id}"
