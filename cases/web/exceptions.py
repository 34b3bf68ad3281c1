"""The operations screens: the exception queue, and from an exception case the two recoveries —
regenerate a communication whose composition failed, with its data corrected in a form built
from the template's JSON Schema, and resend one that did not reach the customer on another
channel or address (suggested from the customer's contacts).

Both call cases/exception_cases.py; the case resolves itself when the communication is sent.
Operations only (`cases.handle_exception`); others get a 403 page.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from cases import exception_cases, services
from cases.models import Case, CaseType, ExceptionKind, RecoveryAction
from cases.requests.data_form import SchemaForm
from cases.web import queues
from cases.web.forms import ResendForm
from cases.web.views import HANDLE, QUEUE_PAGE_SIZE, WORK, case_or_404, staff_only
from ccm.lists import CountLimitedPaginator
from documents import selectors as document_selectors
from documents.composition import CompositionError, DataInvalid
from notifications.models import Channel, Communication, ContactKind, Suppression
from notifications.pipeline.facts import enabled_channels
from notifications.pipeline.recovery import RESENDABLE_CHANNELS, RecoveryError


@require_GET
@staff_only(WORK, HANDLE)
def exception_queue(request: HttpRequest) -> HttpResponse:
    kind = request.GET.get("kind", "")
    error = ""
    if kind and kind not in ExceptionKind.values:
        error = f"There is no exception kind {kind!r}; choose one from the list."
        kind = ""
    page = CountLimitedPaginator(queues.exception_queue(kind=kind), QUEUE_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    rows = [
        {
            "case": case,
            "sla": queues.sla_indicator(case),
            "template": case.details.get("template", ""),
            "recovery": _recovery_for(case),
        }
        for case in page
    ]
    context = {
        "rows": rows,
        "page": page,
        "kind": kind,
        "kinds": ExceptionKind.choices,
        "error": error,
    }
    return render(request, "cases/exceptions.html", context, status=400 if error else 200)


def _recovery_for(case: Case) -> str:
    """Which recovery fits the case: regenerate, resend, or none from this screen."""
    for action, kinds in exception_cases.RECOVERIES.items():
        if case.exception_kind in kinds:
            return action
    return ""


def _failed_communication(case: Case) -> Communication | None:
    if case.case_type != CaseType.EXCEPTION:
        return None
    return (
        Communication.objects.filter(pk=case.details.get("communication"))
        .select_related("template", "template_version", "customer", "document")
        .first()
    )


def _not_applicable(request: HttpRequest, case: Case, action: str) -> HttpResponse | None:
    """The page that says why this recovery does not apply to the case, or None if it does."""
    reason = ""
    if _recovery_for(case) != action or _failed_communication(case) is None:
        kind = case.get_exception_kind_display().lower() if case.exception_kind else ""
        reason = f"{case.reference} is not an exception a {action} can fix" + (
            f" (it is {kind})." if kind else "."
        )
    elif not case.is_open:
        reason = f"{case.reference} is {case.get_state_display().lower()}: nothing to recover."
    if not reason:
        return None
    context = {"case": case, "action": action, "error": reason}
    return render(request, "cases/recovery_unavailable.html", context, status=409)


# --- regenerate ------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@staff_only(WORK, HANDLE)
def regenerate(request: HttpRequest, ref: str) -> HttpResponse:
    case = case_or_404(ref)
    refused = _not_applicable(request, case, RecoveryAction.REGENERATE)
    if refused is not None:
        return refused
    communication = _failed_communication(case)
    assert communication is not None
    # The version the recomposition will use (the published one), so the form asks for what it
    # needs; the version it failed against when none is published (the service then says so).
    version = (
        document_selectors.version_for_sending(code=communication.template.code)
        or communication.template_version
    )
    schema = version.content.get("schema", {}) if version is not None else {}
    error, status = "", 200
    if request.method == "POST":
        form = SchemaForm(request.POST, schema=schema, base=communication.data)
        if not form.is_valid():
            error, status = "Nothing was regenerated: correct the fields marked below.", 400
        else:
            try:
                exception_cases.exception_regenerate(
                    case=case, data=form.cleaned_data["data"], by=request.user
                )
            except DataInvalid as exc:
                form.errors_attach(exc.errors)
                error = (
                    "Nothing was regenerated: the data still does not fit the template. "
                    "Correct the fields marked below."
                )
                status = 422
            except CompositionError as exc:
                error, status = f"Nothing was regenerated: {exc.reason}", 422
            except (services.CaseError, RecoveryError) as exc:
                error, status = f"Nothing was regenerated. {exc}", 409
            else:
                messages.success(
                    request,
                    f"Communication {communication.pk} is being composed again with the "
                    "corrected data; the case resolves when it is sent.",
                )
                return redirect("cases-detail", ref=case.reference)
    else:
        # The data it failed with, checked: what fails is marked before anyone types.
        form = SchemaForm.prefilled(schema=schema, data=communication.data)
        form.is_valid()
    context = {
        "case": case,
        "communication": communication,
        "version": version,
        "form": form,
        "layout": form.layout_items(),
        "error": error,
    }
    return render(request, "cases/regenerate.html", context, status=status)


# --- resend ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suggestion:
    channel: str
    address: str  # as posted: one line per line for a letter
    shown: str
    note: str = ""
    usable: bool = True


def _suggestions(communication: Communication, channels: list[str]) -> list[Suggestion]:
    """The customer's known addresses on the channels a resend can use: valid ones first, each
    with why it may not work (suppressed, marked invalid)."""
    customer = communication.customer
    suppressed = {
        (s.channel, s.address.lower()): s.get_reason_display().lower()
        for s in Suppression.objects.filter(
            lifted_at__isnull=True, address__in=[c.value for c in customer.contacts.all()]
        )
    }
    out = []
    for contact in customer.contacts.all():
        channel = Channel.EMAIL if contact.kind == ContactKind.EMAIL else Channel.SMS
        if channel not in channels:
            continue
        note, usable = ("primary" if contact.is_primary else ""), True
        if not contact.valid:
            note, usable = f"marked invalid: {contact.invalid_reason or 'no reason given'}", False
        elif (channel, contact.value.lower()) in suppressed:
            note, usable = f"suppressed ({suppressed[channel, contact.value.lower()]})", False
        out.append(Suggestion(channel, contact.value, contact.value, note, usable))
    if Channel.PRINT in channels and customer.postal_address:
        lines = [str(line) for line in customer.postal_address]
        note = "" if customer.postal_address_valid else "marked invalid: mail came back"
        out.append(
            Suggestion(
                Channel.PRINT,
                "\n".join(lines),
                " / ".join(lines),
                note,
                customer.postal_address_valid,
            )
        )
    return sorted(out, key=lambda s: not s.usable)


def _resend_channels(communication: Communication) -> list[str]:
    version = communication.template_version
    renditions = version.meta.get("channels", []) if version is not None else []
    enabled = enabled_channels()
    return [c for c in RESENDABLE_CHANNELS if c in enabled and c in renditions]


@require_http_methods(["GET", "POST"])
@staff_only(WORK, HANDLE)
def resend(request: HttpRequest, ref: str) -> HttpResponse:
    case = case_or_404(ref)
    refused = _not_applicable(request, case, RecoveryAction.RESEND)
    if refused is not None:
        return refused
    communication = _failed_communication(case)
    assert communication is not None
    channels = _resend_channels(communication)
    form = ResendForm(request.POST or None, channels=channels)
    error, status = "", 200
    if request.method == "POST":
        if not form.is_valid():
            error, status = "Nothing was resent: correct the form below.", 400
        else:
            try:
                exception_cases.exception_resend(
                    case=case,
                    channel=form.cleaned_data["channel"],
                    address=form.cleaned_data["address"],
                    by=request.user,
                )
            except (services.CaseError, RecoveryError) as exc:
                if exc.field in form.fields:
                    form.add_error(exc.field, str(exc))
                    error, status = "Nothing was resent: correct the form below.", 400
                else:
                    error, status = f"Nothing was resent. {exc}", 409
            else:
                messages.success(
                    request,
                    f"Communication {communication.pk} is being sent again by "
                    f"{form.cleaned_data['channel']}; the case resolves when it is sent.",
                )
                return redirect("cases-detail", ref=case.reference)
    context = {
        "case": case,
        "communication": communication,
        "form": form,
        "channels": channels,
        "suggestions": _suggestions(communication, channels),
        "failed": case.error_details,
        "error": error,
    }
    return render(request, "cases/resend.html", context, status=status)
