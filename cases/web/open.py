"""Opening a case from the agent's screens: find the customer (or come from their page), say
what the case is, attach what the customer sent, and accept the offered first letter (a
complaint's acknowledgement) — previewed as it will print before anything is stored.

Calls cases/opening.py; errors come back at the field that caused them (a letter field the
form asks for in its own words), never as a 500."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods

from cases import opening, services
from cases.requests.data_form import readable_error
from cases.requests.forms import CustomerSearchForm
from cases.requests.selectors import customer_search
from cases.web.forms import (
    UPLOAD_TOO_LARGE,
    CappedUploadHandler,
    CaseOpenForm,
    attachment_max_bytes,
)
from cases.web.views import WORK
from ccm.views import staff_only
from documents.composition import CompositionError
from notifications.errors import IntakeError
from notifications.models import Customer

OPEN = "cases.add_case"
# Where the letter's and the case details' fields are asked on the form.
FORM_FIELD_OF = {
    "summary": "description",
    "complaint.summary": "description",
    "channel": "channel",
    "complaint.channel": "channel",
    "product": "product",
    "complaint.product": "product",
    "account_reference": "account_reference",
    "type": "case_type",
    "customer": None,
}


@require_http_methods(["GET", "POST"])
@staff_only(WORK, OPEN)
@csrf_exempt  # checked by _case_new, once the upload cap is in place (as attachment_add does)
def case_new(request: HttpRequest) -> HttpResponse:
    request.upload_handlers.insert(0, CappedUploadHandler(request, limit=attachment_max_bytes()))
    return _case_new(request)


@csrf_protect
def _case_new(request: HttpRequest) -> HttpResponse:
    customer_id = request.GET.get("customer", "")
    if not customer_id.isdigit():
        search = CustomerSearchForm(request.GET if "q" in request.GET else None)
        results = list(customer_search(search.cleaned_data["q"])) if search.is_valid() else []
        context: dict = {"customer": None, "search": search, "results": results}
        return render(request, "cases/new.html", context)
    customer = get_object_or_404(Customer, pk=int(customer_id))
    form = CaseOpenForm(
        request.POST or None,
        request.FILES or None,
        too_large=getattr(request, UPLOAD_TOO_LARGE, False),
        initial={"case_type": request.GET.get("type", "complaint")},
    )
    context = {"customer": customer, "form": form, "letter": opening.first_letter("complaint")}
    if request.method != "POST":
        return render(request, "cases/new.html", context)
    if form.is_valid():
        data = form.cleaned_data
        case_request = opening.CaseRequest(
            case_type=data["case_type"],
            customer=customer,
            subject=data["subject"],
            channel=data["channel"],
            description=data["description"],
            product=data["product"],
            account_reference=data["account_reference"],
        )
        try:
            if request.POST.get("action") == "preview":
                pdf = opening.case_letter_preview(request=case_request, by=request.user)
                response = HttpResponse(pdf.data, content_type="application/pdf")
                response["Content-Disposition"] = 'inline; filename="letter-preview.pdf"'
                return response
            case, milestone = opening.case_open_for_customer(
                request=case_request,
                by=request.user,
                attachments=[opening.Attachment(*a) for a in data["attachments"]],
                send_first_letter=data["send_first_letter"],
            )
        except (services.CaseError, IntakeError) as exc:
            _error_at(form, exc.field, str(exc))
        except CompositionError as exc:
            for problem in exc.errors:
                _error_at(form, problem.field, readable_error(problem.message))
            if not exc.errors:
                form.add_error(None, f"The letter cannot be written: {exc.reason}")
        else:
            messages.success(request, _opened_message(case, milestone))
            return redirect("cases-detail", ref=case.reference)
        form.refresh_aria()
    return render(request, "cases/new.html", context, status=400)


def _error_at(form: CaseOpenForm, field: str, message: str) -> None:
    target = FORM_FIELD_OF.get(field, field if field in form.fields else None)
    if target is None and field:
        message = f"{field.replace('_', ' ').replace('.', ': ')}: {message}"
    form.add_error(target, message)


def _opened_message(case, milestone) -> str:
    opened = f"Case {case.reference} opened and assigned to you."
    if milestone is None or milestone.communication_id is None:
        return opened
    return (
        f"{opened} {milestone.label} letter requested (communication "
        f"{milestone.communication_id}): it goes out as the customer's channels allow."
    )
