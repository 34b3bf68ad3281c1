"""The agent's case screens: the queue by team ("my cases", unassigned, each team's), and the
case page with its SLA clock, milestones and their letters, the full timeline, notes,
attachments and the moves its state allows. The operations screens (exception queue,
regenerate, resend) are in cases/web/exceptions.py.

Server-rendered, no JavaScript needed. Every change calls a cases service; a move the state
does not allow, or input the service refuses, is shown on the page with what to fix (4xx),
never a 500. Agents and operations work cases (`cases.change_case`); others get a 403 page.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from cases import letters, selectors, services
from cases.models import Case, CaseState, CaseType, Milestone, Team
from cases.requests.data_form import SchemaForm, schema_initial
from cases.web import queues
from cases.web.forms import (
    UPLOAD_TOO_LARGE,
    AssignForm,
    AttachmentForm,
    CappedUploadHandler,
    NoteForm,
    ReopenForm,
    ResolveForm,
    WaitForm,
    attachment_max_bytes,
)
from cases.web.timeline import CASE_TEXT, timeline_rows
from ccm.lists import CountLimitedPaginator
from ccm.views import staff_only
from documents.composition import CompositionError
from notifications.errors import IntakeError
from notifications.models import Communication

WORK = "cases.change_case"
HANDLE = "cases.handle_exception"
QUEUE_PAGE_SIZE = 25
RECOVERY_OUTCOMES = {
    f"case.{action}_{outcome}"
    for action in ("regenerate", "resend")
    for outcome in ("succeeded", "failed")
}


def case_or_404(ref: str) -> Case:
    return get_object_or_404(
        Case.objects.select_related("customer", "assignee", "parent", "recovery_communication"),
        reference=ref,
    )


# --- the queue -------------------------------------------------------------------------------


def _queue_label(queue: str) -> str:
    if queue == queues.MY_CASES:
        return "My cases"
    if queue == queues.UNASSIGNED:
        return "Unassigned"
    return Team(queue).label


def _state_label(state: str) -> str:
    if state == queues.OPEN:
        return "Open (not resolved)"
    if state == queues.ALL:
        return "Every state"
    return CaseState(state).label


@require_GET
@staff_only(WORK)
def queue(request: HttpRequest) -> HttpResponse:
    params = request.GET
    chosen = {
        "queue": params.get("queue") or queues.MY_CASES,
        "state": params.get("state") or queues.OPEN,
        "sort": params.get("sort") or "deadline",
    }
    allowed = {"queue": queues.QUEUES, "state": queues.STATES, "sort": list(queues.SORTS)}
    errors = []
    for name, value in list(chosen.items()):
        if value not in allowed[name]:
            errors.append(f"There is no {name} {value!r}; choose one from the page.")
            chosen[name] = allowed[name][0]
    cases = queues.case_queue(
        queue=chosen["queue"], user=request.user, state=chosen["state"], sort=chosen["sort"]
    )
    page = CountLimitedPaginator(cases, QUEUE_PAGE_SIZE).get_page(params.get("page"))
    counts = queues.queue_counts(user=request.user, state=chosen["state"])
    context = {
        **chosen,
        "error": " ".join(errors),
        "page": page,
        "rows": [{"case": case, "sla": queues.sla_indicator(case)} for case in page],
        "tabs": [
            {
                "queue": q,
                "label": _queue_label(q),
                "count": queues.count_words(counts[q], queues.TAB_COUNT_CAP),
                "current": q == chosen["queue"],
            }
            for q in queues.QUEUES
        ],
        "queue_label": _queue_label(chosen["queue"]),
        "state_label": _state_label(chosen["state"]),
        "states": [{"value": s, "label": _state_label(s)} for s in queues.STATES],
        "sorts": queues.SORTS,
    }
    return render(request, "cases/queue.html", context, status=400 if errors else 200)


# --- the case page ---------------------------------------------------------------------------

ACTION_FORMS: dict[str, type[forms.Form]] = {
    "assign": AssignForm,
    "wait": WaitForm,
    "resolve": ResolveForm,
    "reopen": ReopenForm,
}


def _form(name: str, case: Case, data=None, files=None) -> forms.Form:
    if name == "assign":
        return AssignForm(data, team=case.team, prefix="assign")
    if name == "note":
        return NoteForm(data, prefix="note")
    if name == "attachment":
        return AttachmentForm(data, files, prefix="attachment")
    return ACTION_FORMS[name](data, prefix=name)


def letter_form(case: Case, milestone: Milestone, *, by, data=None) -> SchemaForm | None:
    """The form of a milestone letter's data, from its template's schema, prefilled with what
    the case supplies (None when the milestone sends no letter, or none is published)."""
    version = letters.milestone_letter_version(milestone)
    if version is None or case.customer is None:
        return None
    known = letters.milestone_letter_data(case, milestone, by=by, extra={})
    return SchemaForm(
        data,
        schema=version.content.get("schema", {}),
        base=known,
        initial=schema_initial(known),
        prefix=f"milestone-{milestone.code}",
    )


def _milestone_rows(case: Case, bound: dict[str, forms.Form], communications, by) -> list[dict]:
    rows = []
    for milestone in case.milestones.select_related("reached_by").order_by("sequence"):
        key = f"milestone-{milestone.code}"
        can_reach = milestone.reached_at is None and case.state != CaseState.CLOSED
        form = bound.get(key) or (letter_form(case, milestone, by=by) if can_reach else None)
        rows.append(
            {
                "milestone": milestone,
                "communication": communications.get(milestone.communication_id),
                "on_time": milestone.reached_at <= milestone.due_at
                if milestone.reached_at
                else None,
                "can_reach": can_reach,
                "form": form,
                "layout": form.layout_items() if isinstance(form, SchemaForm) else [],
                "key": key,
            }
        )
    return rows


def _communications(case: Case) -> dict[int, Communication]:
    ids = set(case.communication_links.values_list("communication_id", flat=True))
    letters = case.milestones.exclude(communication=None)
    ids |= set(letters.values_list("communication_id", flat=True))
    return {
        c.pk: c
        for c in Communication.objects.filter(pk__in=ids).select_related(
            "template", "document", "customer"
        )
    }


def render_case(
    request: HttpRequest,
    case: Case,
    *,
    status: int = 200,
    error: str = "",
    bound: dict[str, forms.Form] | None = None,
    errors: list[str] | None = None,
) -> HttpResponse:
    """The case page; after a refused change, with the error and the form as it was sent."""
    bound = bound or {}
    allowed = services.allowed_actions(case)
    communications = _communications(case)
    entries = selectors.case_timeline(case)
    context = {
        "case": case,
        "sla": queues.sla_indicator(case),
        "allowed": allowed,
        "can_assign_me": "assign" in allowed
        and case.assignee_id != request.user.pk
        and request.user.has_perm(WORK),
        "forms": {
            name: bound.get(name) or _form(name, case)
            for name in ("assign", "wait", "resolve", "reopen", "note", "attachment")
        },
        "milestones": _milestone_rows(case, bound, communications, request.user),
        "timeline": timeline_rows(entries, communications),
        "notes": case.notes.select_related("author"),
        "attachments": case.attachments.select_related("uploaded_by"),
        "error": error,
        "errors": errors or [],
        "is_exception": case.case_type == CaseType.EXCEPTION,
        "can_handle": request.user.has_perm(HANDLE),
        "recovery_outcome": _recovery_outcome(entries),
    }
    return render(request, "cases/case.html", context, status=status)


def _recovery_outcome(entries: list[selectors.TimelineEntry]) -> dict | None:
    """How the last regenerate or resend ended, from the case's audit trail."""
    for entry in reversed(entries):
        if entry.action in RECOVERY_OUTCOMES:
            return {"at": entry.at, "text": CASE_TEXT[entry.action](entry.detail)}
    return None


@require_GET
@staff_only(WORK)
def case_detail(request: HttpRequest, ref: str) -> HttpResponse:
    return render_case(request, case_or_404(ref))


# What each button does: the service it calls with the form's cleaned data, and what to say.
ACTIONS: dict[str, tuple[Callable[[Case, Any, dict], Case], str]] = {
    "assign_me": (
        lambda case, by, d: services.case_assign(case=case, assignee=by, by=by),
        "assigned to you",
    ),
    "assign": (
        lambda case, by, d: services.case_assign(case=case, assignee=d["assignee"], by=by),
        "assigned to {assignee}",
    ),
    "start": (lambda case, by, d: services.case_start(case=case, by=by), "work started"),
    "wait": (
        lambda case, by, d: services.case_wait(case=case, by=by, reason=d["reason"]),
        "waiting on the customer; the SLA clock is stopped",
    ),
    "resume": (
        lambda case, by, d: services.case_resume(case=case, by=by),
        "resumed; the SLA clock runs again",
    ),
    "resolve": (
        lambda case, by, d: services.case_resolve(case=case, by=by, resolution=d["resolution"]),
        "resolved",
    ),
    "close": (lambda case, by, d: services.case_close(case=case, by=by), "closed"),
    "reopen": (
        lambda case, by, d: services.case_reopen(case=case, by=by, reason=d["reason"]),
        "reopened",
    ),
}


def _refused(form: forms.Form | None, exc: services.CaseError) -> str:
    """Put a service's field error on the form when it has that field; else it is the page's."""
    if form is not None and exc.field in form.fields:
        form.add_error(exc.field, str(exc))
        return "Nothing changed: correct the form below."
    return f"Nothing changed. {exc}"


@require_POST
@staff_only(WORK)
def case_action(request: HttpRequest, ref: str, action: str) -> HttpResponse:
    if action not in ACTIONS:
        raise Http404(f"There is no action {action!r}.")
    case = case_or_404(ref)
    form = _form(action, case, request.POST) if action in ACTION_FORMS else None
    if form is not None and not form.is_valid():
        return render_case(
            request,
            case,
            status=400,
            error="Nothing changed: correct the form below.",
            bound={action: form},
        )
    do, done = ACTIONS[action]
    try:
        moved = do(case, request.user, form.cleaned_data if form is not None else {})
    except services.TransitionRefused as exc:
        return render_case(request, case, status=409, error=f"Nothing changed. {exc}")
    except services.CaseError as exc:
        return render_case(
            request,
            case,
            status=400,
            error=_refused(form, exc),
            bound={action: form} if form is not None else {},
        )
    assignee = moved.assignee.get_username() if moved.assignee else ""
    messages.success(request, f"{moved.reference} {done.format(assignee=assignee)}.")
    return redirect("cases-detail", ref=moved.reference)


@require_POST
@staff_only(WORK, "cases.add_casenote")
def note_add(request: HttpRequest, ref: str) -> HttpResponse:
    case = case_or_404(ref)
    form = _form("note", case, request.POST)
    if form.is_valid():
        try:
            services.case_note_add(case=case, body=form.cleaned_data["body"], by=request.user)
        except services.CaseError as exc:
            error = _refused(form, exc)
        else:
            messages.success(request, "Note added.")
            return redirect(reverse("cases-detail", args=[case.reference]) + "#notes")
    else:
        error = "The note was not added: correct the form below."
    return render_case(request, case, status=400, error=error, bound={"note": form})


@require_POST
@staff_only(WORK, "cases.add_caseattachment")
@csrf_exempt  # checked by _attachment_save, once the size cap is in place (Django's recipe)
def attachment_add(request: HttpRequest, ref: str) -> HttpResponse:
    # Stop reading a file past the limit instead of spooling all of it to disk first.
    request.upload_handlers.insert(0, CappedUploadHandler(request, limit=attachment_max_bytes()))
    return _attachment_save(request, ref)


@csrf_protect
def _attachment_save(request: HttpRequest, ref: str) -> HttpResponse:
    case = case_or_404(ref)
    form = AttachmentForm(
        request.POST,
        request.FILES,
        prefix="attachment",
        too_large=getattr(request, UPLOAD_TOO_LARGE, False),
    )
    if not form.is_valid():
        return render_case(
            request,
            case,
            status=400,
            error="The file was not attached: correct the form below.",
            bound={"attachment": form},
        )
    attachment = services.case_attachment_add(
        case=case,
        file=form.cleaned_data["file"],
        by=request.user,
        name=form.file_name,
        content_type=form.content_type,
    )
    messages.success(request, f"{attachment.name} attached.")
    return redirect(reverse("cases-detail", args=[case.reference]) + "#attachments")


@require_GET
@staff_only(WORK, "cases.view_caseattachment")
def attachment_download(request: HttpRequest, ref: str, pk: int) -> FileResponse:
    case = case_or_404(ref)
    attachment = get_object_or_404(case.attachments, pk=pk)
    response = FileResponse(
        attachment.file.open("rb"),
        as_attachment=True,
        filename=attachment.name,
        content_type=attachment.content_type or "application/octet-stream",
    )
    # A customer's file is downloaded, never rendered inside the back-office's origin.
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Cache-Control"] = "private, no-store"
    response["X-Content-SHA256"] = attachment.sha256
    return response


@require_POST
@staff_only(WORK)
def milestone_reach(request: HttpRequest, ref: str, code: str) -> HttpResponse:
    case = case_or_404(ref)
    milestone = get_object_or_404(case.milestones, code=code)
    key = f"milestone-{code}"
    form = letter_form(case, milestone, by=request.user, data=request.POST)
    if form is not None and not form.is_valid():
        return render_case(
            request,
            case,
            status=400,
            error=f"{milestone.label} was not reached: correct the letter's fields.",
            bound={key: form},
        )
    data = form.cleaned_data["data"] if form is not None else {}
    try:
        if request.POST.get("action") == "preview":
            pdf = letters.milestone_letter_preview(case, milestone, by=request.user, extra=data)
            if pdf is None:
                raise Http404(f"{milestone.label} sends no letter to preview.")
            response = HttpResponse(pdf.data, content_type="application/pdf")
            response["Content-Disposition"] = 'inline; filename="letter-preview.pdf"'
            return response
        reached = services.milestone_reach(case=case, code=code, by=request.user, data=data)
    except services.TransitionRefused as exc:
        return render_case(request, case, status=409, error=f"Nothing changed. {exc}")
    except (services.CaseError, IntakeError) as exc:
        return render_case(request, case, status=422, error=f"Nothing changed. {exc}")
    except CompositionError as exc:
        if form is None:
            return render_case(request, case, status=422, error=f"Nothing changed. {exc.reason}")
        form.errors_attach(exc.errors)
        if not exc.errors:
            form.add_error(None, exc.reason)
        return render_case(
            request,
            case,
            status=422,
            error=f"{milestone.label} was not reached: the letter cannot be written from this "
            "data. Complete the fields marked below.",
            bound={key: form},
        )
    letter = (
        f"; letter {reached.communication.template.name} requested "
        f"(communication {reached.communication_id})"
        if reached.communication is not None
        else ""
    )
    messages.success(request, f"{reached.label} reached{letter}.")
    return redirect("cases-detail", ref=case.reference)
