"""The customer screens for agents, operations and reviewers: find a customer (list and search),
and the customer page — contact points with their state, preferences, the consent ledger as a
timeline, every recent communication with its channels, status and document, open cases and
address corrections — with the actions from there: open a case, request a reprint, write a
letter, correct the postal address.

Who sees what follows ccm/roles.py: the page needs the customer records (contact points,
preferences, the ledger: CUSTOMER_RECORDS_VIEW); each action shows only to whoever may take it.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from cases import address_corrections, services
from cases.customer_models import AddressCorrection, CorrectionState
from cases.models import Case
from cases.requests.forms import CustomerSearchForm
from cases.web import customer_selectors
from cases.web.forms import AddressCorrectionForm
from ccm.approvals import Proof
from ccm.views import staff_only
from notifications.models import Customer

VIEW = ("notifications.view_customer", "notifications.view_contactpoint")
CORRECT = "cases.add_addresscorrection"


def customer_or_404(pk: int) -> Customer:
    return get_object_or_404(Customer, pk=pk)


@require_GET
@staff_only(*VIEW)
def customer_list(request: HttpRequest) -> HttpResponse:
    search = CustomerSearchForm(request.GET if request.GET.get("q") else None)
    search.fields["q"].help_text = (
        "A reference such as NW-2048-7731 (or its start), part of the name, an email address "
        "or a phone number."
    )
    after = None
    if search.is_bound:
        rows = (
            customer_selectors.customer_search(search.cleaned_data["q"])
            if search.is_valid()
            else []
        )
    else:
        after_id = request.GET.get("after", "")
        after = Customer.objects.filter(pk=after_id).first() if after_id.isdigit() else None
        rows = customer_selectors.customers_after(after)
    more = not search.is_bound and len(rows) == customer_selectors.LIST_PAGE_SIZE
    context = {"search": search, "rows": rows, "next_after": rows[-1].pk if more else None}
    return render(request, "cases/customers/list.html", context)


@require_GET
@staff_only(*VIEW)
def customer_detail(request: HttpRequest, pk: int) -> HttpResponse:
    customer = customer_or_404(pk)
    context = {
        "customer": customer,
        "contacts": customer_selectors.contact_rows(customer),
        "preferences": customer_selectors.preferences(customer),
        "ledger": customer_selectors.consent_ledger(customer),
        "communications": customer_selectors.communication_rows(customer),
        "cases": customer_selectors.open_cases(customer),
        "corrections": customer_selectors.address_corrections(customer),
        "pending": address_corrections.pending_correction(customer),
        "held": address_corrections.held_letters(customer),
    }
    return render(request, "cases/customers/detail.html", context)


@require_http_methods(["GET", "POST"])
@staff_only(*VIEW, CORRECT)
def address_correct(request: HttpRequest, pk: int) -> HttpResponse:
    """Correct the postal address; from an exception (`?case=REF`) its letter follows."""
    customer = customer_or_404(pk)
    ref = request.GET.get("case") or request.POST.get("case") or ""
    case = Case.objects.filter(reference=ref, customer=customer).first() if ref else None
    form = AddressCorrectionForm(
        request.POST or None,
        initial={"postal_address": "\n".join(customer.postal_address)},
    )
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                correction = address_corrections.address_correction_request(
                    customer=customer,
                    postal_address=form.cleaned_data["postal_address"],
                    reason=form.cleaned_data["reason"],
                    case=case,
                    by=request.user,
                )
            except services.CaseError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, str(exc))
                form.refresh_aria()
            else:
                messages.success(request, _corrected_message(correction))
                return redirect("customer-detail", pk=customer.pk)
    context = {
        "customer": customer,
        "case": case,
        "form": form,
        "held": address_corrections.held_letters(customer),
        "four_eyes": address_corrections.four_eyes_reason(customer),
        "pending": address_corrections.pending_correction(customer),
    }
    return render(request, "cases/customers/address.html", context, status=status)


def _corrected_message(correction: AddressCorrection) -> str:
    if correction.state == CorrectionState.AWAITING_APPROVAL:
        return (
            f"The new address {correction.address_text} waits for a second person because "
            f"{correction.four_eyes_reason}. It applies when a reviewer approves it."
        )
    resent = [r for r in correction.released if r["outcome"] == "resent"]
    letters = (
        f" {len(resent)} held letter{'s' * (len(resent) != 1)} sent again to it by post."
        if resent
        else ""
    )
    return f"Address corrected to {correction.address_text}.{letters}"


def address_correction_proof(correction: AddressCorrection) -> Proof:
    return Proof(
        "cases/customers/address_proof.html",
        {"correction": correction, "held": address_corrections.held_letters(correction.customer)},
    )
