"""The agents' screens for reprints and correspondence (server-rendered, no JavaScript), and the
proofs a reviewer sees of them on the sign-off screen."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from cases.requests import correspondence, reprints
from cases.requests import selectors as request_selectors
from cases.requests.data_form import SchemaForm, schema_initial
from cases.requests.forms import CustomerSearchForm, IdentityForm, ReprintForm, TemplateChoiceForm
from cases.requests.models import CorrespondenceRequest, ReprintRequest, ReprintState
from cases.services import CaseError
from ccm.approvals import Proof
from documents import services as documents
from documents.composition import CompositionError
from documents.models import Document
from notifications.models import Customer
from notifications.pipeline.content import addressee_of

VIEW_REPRINT = "cases.view_reprintrequest"
ADD_REPRINT = "cases.add_reprintrequest"
VIEW_LETTER = "cases.view_correspondencerequest"
ADD_LETTER = "cases.add_correspondencerequest"
CHANNEL_LABELS = {"email": "Email", "print": "Post", "sms": "SMS"}


def _allowed(perm: str):
    def decorate(view):
        return login_required(permission_required(perm, raise_exception=True)(view))

    return decorate


def _pdf(document: Document, name: str) -> FileResponse:
    response = FileResponse(document.file.open("rb"), content_type="application/pdf", filename=name)
    response["X-Content-SHA256"] = document.sha256
    return response


def _customer_step(request: HttpRequest, template: str, context: dict) -> HttpResponse:
    """Find the customer first: by reference or by name."""
    search = CustomerSearchForm(request.GET if "q" in request.GET else None)
    results = (
        list(request_selectors.customer_search(search.cleaned_data["q"]))
        if search.is_valid()
        else []
    )
    return render(request, template, {**context, "search": search, "results": results})


@require_GET
@_allowed(VIEW_REPRINT)
def requests_list(request: HttpRequest) -> HttpResponse:
    mine = request_selectors.requests_of(request.user)
    return render(
        request,
        "cases/requests/list.html",
        {
            "reprints": mine["reprints"][:200],
            "letters": mine["correspondence"][:200],
            "to_verify": request_selectors.reprints_to_verify()[:50],
        },
    )


# --- reprints ----------------------------------------------------------------------------------


def _reprint_choices(customer: Customer) -> tuple[list, list]:
    documents_ = []
    for c in request_selectors.issued_communications(customer)[:100]:
        pages = c.document.page_count  # type: ignore[union-attr]
        label = f"{c.template.name} — {c.created_at:%d %b %Y} (communication {c.pk}, {pages} p.)"
        documents_.append((c.document_id, label))
    channels = []
    for channel in request_selectors.reprint_channels():
        known = request_selectors.known_addresses(customer, channel)
        on_file = f"on file: {known[0]}" if known else "no address on file"
        channels.append((channel, f"{CHANNEL_LABELS.get(channel, channel)} ({on_file})"))
    return documents_, channels


@require_http_methods(["GET", "POST"])
@_allowed(ADD_REPRINT)
def reprint_new(request: HttpRequest) -> HttpResponse:
    customer_id = request.GET.get("customer")
    if not customer_id:
        return _customer_step(request, "cases/requests/reprint_new.html", {"customer": None})
    customer = get_object_or_404(Customer, pk=customer_id)
    documents_, channels = _reprint_choices(customer)
    form = ReprintForm(request.POST or None, documents=documents_, channels=channels)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                created = reprints.reprint_request_create(
                    customer=customer,
                    document=get_object_or_404(Document, pk=form.cleaned_data["document"]),
                    reason=form.cleaned_data["reason"],
                    channel=form.cleaned_data["channel"],
                    address=form.cleaned_data["address"],
                    identity_verification=form.cleaned_data["identity_verification"],
                    identity_note=form.cleaned_data["identity_note"],
                    by=request.user,
                )
            except CaseError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, str(exc))
                form.refresh_aria()
            else:
                messages.success(request, _reprint_message(created))
                return redirect("agent-reprint", pk=created.pk)
        status = 400
    return render(
        request,
        "cases/requests/reprint_new.html",
        {"customer": customer, "form": form, "has_documents": bool(documents_)},
        status=status,
    )


def _reprint_message(created: ReprintRequest) -> str:
    if created.state == ReprintState.AWAITING_RELEASE:
        return (
            f"Reprint {created.case.reference} filed. It waits for a reviewer's release because "
            f"{'; '.join(created.release_reasons)}."
        )
    return f"Reprint {created.case.reference} filed and released: the copy is being sent."


@require_http_methods(["GET", "POST"])
@_allowed(VIEW_REPRINT)
def reprint_detail(request: HttpRequest, pk: int) -> HttpResponse:
    reprint = get_object_or_404(
        ReprintRequest.objects.select_related(
            "customer", "case", "document__template_version__template", "duplicate"
        ),
        pk=pk,
    )
    verify = None
    status = 200
    if reprint.state == ReprintState.REQUESTED and reprint.requested_by_id is None:
        verify = IdentityForm(request.POST or None)
        if request.method == "POST":
            if not request.user.has_perm(ADD_REPRINT):
                return render(request, "403.html", status=403)
            if verify.is_valid():
                try:
                    reprints.reprint_request_submit(
                        request=reprint, by=request.user, **verify.cleaned_data
                    )
                except CaseError as exc:
                    verify.add_error(None, str(exc))
                    verify.refresh_aria()
                else:
                    messages.success(request, "Identity recorded; the reprint is on its way.")
                    return redirect("agent-reprint", pk=reprint.pk)
            status = 400
    return render(
        request,
        "cases/requests/reprint_detail.html",
        {
            "reprint": reprint,
            "approval": request_selectors.last_approval(reprint),
            "verify": verify,
        },
        status=status,
    )


@require_GET
@_allowed(VIEW_REPRINT)
def reprint_duplicate_pdf(request: HttpRequest, pk: int) -> HttpResponseBase:
    reprint = get_object_or_404(ReprintRequest.objects.select_related("duplicate"), pk=pk)
    if reprint.duplicate is None:
        return render(request, "404.html", status=404)
    return _pdf(reprint.duplicate, f"reprint-{reprint.pk}-duplicate.pdf")


@require_GET
@_allowed(VIEW_REPRINT)
def reprint_original_pdf(request: HttpRequest, pk: int) -> HttpResponseBase:
    reprint = get_object_or_404(ReprintRequest.objects.select_related("document"), pk=pk)
    return _pdf(reprint.document, f"reprint-{reprint.pk}-original.pdf")


def reprint_proof(reprint: ReprintRequest) -> Proof:
    known = request_selectors.known_addresses(reprint.customer, reprint.channel)
    return Proof(
        "cases/requests/reprint_proof.html",
        {"reprint": reprint, "known": known},
    )


# --- correspondence ----------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@_allowed(ADD_LETTER)
def correspondence_new(request: HttpRequest) -> HttpResponse:
    customer_id = request.GET.get("customer")
    if not customer_id:
        return _customer_step(request, "cases/requests/correspondence_new.html", {"customer": None})
    customer = get_object_or_404(Customer, pk=customer_id)
    versions = [
        v for v in request_selectors.correspondence_versions() if request_selectors.writable(v)
    ]
    code = request.GET.get("template", "")
    chooser = TemplateChoiceForm(
        {"template": code} if code else None,
        templates=[(v.template.code, f"{v.template.name} (v{v.number})") for v in versions],
    )
    context: dict = {"customer": customer, "chooser": chooser}
    if not chooser.is_valid():
        return render(request, "cases/requests/correspondence_new.html", context)
    version = next(v for v in versions if v.template.code == chooser.cleaned_data["template"])
    form = SchemaForm(
        request.POST or None,
        schema=version.content.get("schema", {}),
        initial=schema_initial(correspondence.known_data(customer)),
    )
    context |= {"version": version, "form": form, "layout": form.layout_items()}
    if request.method != "POST":
        return render(request, "cases/requests/correspondence_new.html", context)
    channel = request.POST.get("channel", "")
    context["channel"] = channel
    if form.is_valid():
        data = form.cleaned_data["data"]
        try:
            if request.POST.get("action") == "preview":
                pdf = correspondence.correspondence_preview(
                    template_code=version.template.code, data=data, customer=customer
                )
                response = HttpResponse(pdf.data, content_type="application/pdf")
                response["Content-Disposition"] = 'inline; filename="letter-preview.pdf"'
                return response
            created = correspondence.correspondence_request_create(
                template_code=version.template.code,
                customer=customer,
                data=data,
                channel=channel,
                by=request.user,
            )
        except CompositionError as exc:
            form.errors_attach(exc.errors)
            if not exc.errors:
                form.add_error(None, exc.reason)
        except CaseError as exc:
            context["channel_error"] = str(exc) if exc.field == "channel" else ""
            if exc.field != "channel":
                form.add_error(None, str(exc))
        else:
            messages.success(
                request,
                f"Letter {created.case.reference} submitted: it waits for a reviewer's release.",
            )
            return redirect("agent-correspondence", pk=created.pk)
        form.refresh_aria()
    context["layout"] = form.layout_items()
    return render(request, "cases/requests/correspondence_new.html", context, status=400)


@require_GET
@_allowed(VIEW_LETTER)
def correspondence_detail(request: HttpRequest, pk: int) -> HttpResponse:
    letter = get_object_or_404(
        CorrespondenceRequest.objects.select_related(
            "customer", "case", "template", "document", "communication"
        ),
        pk=pk,
    )
    return render(
        request,
        "cases/requests/correspondence_detail.html",
        {"letter": letter, "approval": request_selectors.last_approval(letter)},
    )


@require_GET
@_allowed(VIEW_LETTER)
def correspondence_letter_pdf(request: HttpRequest, pk: int) -> HttpResponseBase:
    letter = get_object_or_404(CorrespondenceRequest.objects.select_related("document"), pk=pk)
    return _pdf(letter.document, f"letter-{letter.pk}.pdf")


def correspondence_proof(letter: CorrespondenceRequest) -> Proof:
    email = None
    if "email" in letter.template_version.meta.get("channels", []):
        try:
            email = documents.template_preview(
                version=letter.template_version,
                data=letter.data,
                channels=["email"],
                addressee=addressee_of(letter.customer),
            ).email
        except CompositionError:
            email = None
    return Proof(
        "cases/requests/correspondence_proof.html",
        {
            "letter": letter,
            "email": email,
            "data": json.dumps(letter.data, indent=2, sort_keys=True, ensure_ascii=False),
        },
    )
