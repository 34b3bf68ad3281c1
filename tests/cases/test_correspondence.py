"""Ad hoc correspondence: a form generated from the template's JSON Schema, errors per field,
a PDF preview, and a letter archived at submission that a reviewer releases and that is sent."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django import forms
from django.core import mail
from django.core.exceptions import PermissionDenied

from cases.models import CorrespondenceRequest
from cases.requests import correspondence
from cases.requests.data_form import SchemaForm
from ccm import approvals
from ccm.models import AuditEvent
from documents.composition import DataInvalid
from notifications.models import CommState, Communication
from tests.cases.reprint_fixtures import pdf_text

LETTER = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}
FORM = {"customer.name": "Ada Lovelace", "balance": "12.50", "as_of": "2026-05-01"}

RICH_SCHEMA = {
    "type": "object",
    "required": ["reference", "kind", "handler"],
    "properties": {
        "reference": {"type": "string", "title": "Our reference", "maxLength": 20},
        "kind": {"enum": ["phone", "letter"], "description": "How they contacted us"},
        "weeks": {"type": "integer"},
        "goodwill": {"type": "boolean", "title": "Goodwill payment offered"},
        "points": {"type": "array", "items": {"type": "string"}},
        "handler": {"$ref": "#/$defs/handler"},
    },
    "$defs": {
        "handler": {
            "type": "object",
            "title": "Complaint handler",
            "required": ["email"],
            "properties": {"email": {"type": "string", "format": "email"}},
        }
    },
}


def letter_url(customer) -> str:
    return f"/agent/correspondence/new/?customer={customer.pk}&template=letter"


def test_the_form_is_generated_from_the_schema(letter):
    form = SchemaForm(schema=letter.content["schema"])
    # then each property is a field of its type, labelled from its name
    # (not the addressee: `customer` comes from the customer record, not from the agent)
    assert list(form.fields) == ["balance", "as_of"]
    assert isinstance(form.fields["balance"], forms.DecimalField)
    assert isinstance(form.fields["as_of"], forms.DateField)
    assert form.fields["as_of"].widget.input_type == "date"
    assert [form.fields[n].label for n in form.fields] == ["Balance", "As of"]


def test_a_nested_object_is_a_fieldset_of_its_own():
    schema = {
        "type": "object",
        "required": ["handler"],
        "properties": {
            "handler": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}},
            }
        },
    }
    (group,) = SchemaForm(schema=schema).layout_items()
    assert group["is_group"]
    assert group["legend"] == "Handler"
    assert group["items"][0]["field"].name == "handler.name"


def test_titles_descriptions_enums_refs_and_simple_arrays():
    form = SchemaForm(
        {
            "reference": "R-1",
            "kind": "phone",
            "weeks": "8",
            "goodwill": "on",
            "points": "First\n\nSecond\n",
            "handler.email": "h@northwind.example",
        },
        schema=RICH_SCHEMA,
    )
    assert form.fields["reference"].label == "Our reference"
    assert form.fields["reference"].max_length == 20
    assert form.fields["kind"].help_text == "How they contacted us"
    assert [c[0] for c in form.fields["kind"].choices] == ["", "phone", "letter"]
    assert isinstance(form.fields["weeks"], forms.IntegerField)
    assert isinstance(form.fields["goodwill"], forms.BooleanField)
    assert isinstance(form.fields["handler.email"], forms.EmailField)
    # required properties first, in the order the schema lists them; the object as a fieldset
    assert [i.get("legend") or i["field"].name for i in form.layout_items()] == [
        "reference",
        "kind",
        "Complaint handler",
        "weeks",
        "goodwill",
        "points",
    ]
    assert form.is_valid(), form.errors
    assert form.cleaned_data["data"] == {
        "reference": "R-1",
        "kind": "phone",
        "weeks": 8,
        "goodwill": True,
        "points": ["First", "Second"],
        "handler": {"email": "h@northwind.example"},
    }


def test_schema_errors_are_shown_at_their_fields():
    form = SchemaForm({"reference": "R-1" * 10, "weeks": "x"}, schema=RICH_SCHEMA)
    assert not form.is_valid()
    # a type error from the field, a required error from the schema at the nested field
    assert "weeks" in form.errors
    assert form.errors["kind"] == ["Required: fill this in."]
    assert "reference" in form.errors
    assert form["weeks"].field.widget.attrs["aria-invalid"] == "true"
    assert "id_weeks_error" in form["weeks"].field.widget.attrs["aria-describedby"]


def test_the_agent_form_page_lists_the_fields_with_labels(client, agent, letter, customer):
    client.force_login(agent)
    response = client.get(letter_url(customer))
    assert response.status_code == 200
    page = response.content.decode()
    assert 'name="balance"' in page
    assert 'type="date" name="as_of"' in page
    # the addressee is not asked for: the letter is addressed from the customer record
    assert "id_customer.name" not in page


def test_invalid_data_shows_errors_per_field_and_saves_nothing(client, agent, letter, customer):
    client.force_login(agent)
    response = client.post(
        letter_url(customer),
        {"customer.name": "", "balance": "lots", "as_of": "2026-05-01", "action": "submit"},
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="id_balance_error"' in page
    assert 'aria-describedby="id_balance_error"' in page
    assert 'id="id_customer.name_error"' not in page
    assert not CorrespondenceRequest.objects.exists()


def test_preview_renders_the_letter_as_a_pdf(client, agent, letter, customer):
    client.force_login(agent)
    response = client.post(letter_url(customer), {**FORM, "action": "preview"})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert "Dear Ada Lovelace" in pdf_text(response.content)
    assert not CorrespondenceRequest.objects.exists()


def test_submitted_letter_waits_for_release_then_is_sent(
    client, agent, reviewer, letter, customer, sync_tasks
):
    client.force_login(agent)
    # when the agent submits the form
    response = sync_tasks(client.post, letter_url(customer), {**FORM, "action": "submit"})
    assert response.status_code == 302
    letter_request = CorrespondenceRequest.objects.get()
    assert response["Location"] == f"/agent/correspondence/{letter_request.pk}/"
    # then the letter is archived as it is and waits for a reviewer
    assert letter_request.state == "awaiting_release"
    # (what the agent typed; the addressee comes from the customer record)
    assert letter_request.data == {k: v for k, v in LETTER.items() if k != "customer"}
    assert "Dear Ada Lovelace" in pdf_text(letter_request.document.file.read())
    approval = approvals.pending_for(letter_request)
    assert approval.purpose == "correspondence.release"
    assert client.get(f"/agent/correspondence/{letter_request.pk}/").status_code == 200
    # the agent cannot release their own letter
    with pytest.raises(PermissionDenied):
        approvals.approval_decide(approval=approval, by=agent, decision="approve")
    # when a reviewer releases it
    mail.outbox.clear()
    sync_tasks(approvals.approval_decide, approval=approval, by=reviewer, decision="approve")
    # then exactly that file is sent, as a "form" communication linked to the case
    letter_request.refresh_from_db()
    assert letter_request.state == "sent"
    communication = letter_request.communication
    assert (communication.source, communication.document, communication.state) == (
        "form",
        letter_request.document,
        "sent",
    )
    assert mail.outbox[-1].attachments[0][1] == letter_request.document.file.open("rb").read()
    case = letter_request.case
    case.refresh_from_db()
    assert (case.case_type, case.state) == ("correspondence", "resolved")
    assert case.communication_links.filter(communication=communication).exists()
    assert list(
        AuditEvent.objects.filter(subject_type="cases.correspondencerequest").values_list(
            "action", flat=True
        )
    ) == [
        "correspondence.requested",
        "correspondence.released",
        "correspondence.sent",
    ]


def test_a_rejected_letter_is_not_sent(agent, reviewer, letter, customer, sync_tasks):
    created = sync_tasks(
        correspondence.correspondence_request_create,
        template_code="letter",
        customer=customer,
        data=LETTER,
        by=agent,
    )
    sync_tasks(
        approvals.approval_decide,
        approval=approvals.pending_for(created),
        by=reviewer,
        decision="reject",
        comment="Wrong balance.",
    )
    created.refresh_from_db()
    assert created.state == "rejected"
    assert created.communication is None


def test_bad_data_is_refused_before_anything_is_archived(agent, letter, customer):
    with pytest.raises(DataInvalid) as refused:
        correspondence.correspondence_request_create(
            template_code="letter",
            customer=customer,
            data={**LETTER, "balance": "twelve"},
            by=agent,
        )
    assert [e.field for e in refused.value.errors] == ["balance"]
    assert not CorrespondenceRequest.objects.exists()


# --- the API -----------------------------------------------------------------------------------


def test_api_correspondence_is_201_awaiting_release(letter, customer, api_client, sync_tasks):
    client = api_client("cases:write", "cases:read")
    body = {"template": "letter", "customer": "C-1", "data": LETTER, "channel": "email"}
    response = sync_tasks(client.post, "/api/v1/correspondence", body, format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["state"] == "awaiting_release"
    assert created["approval_state"] == "pending"
    assert created["channel"] == "email"
    read = client.get(f"/api/v1/correspondence/{created['id']}")
    assert read.status_code == 200
    assert read.json()["document_sha256"] == created["document_sha256"]


@pytest.mark.parametrize(
    ("changes", "status", "field"),
    [
        ({"data": {**LETTER, "balance": "x"}}, 422, "data.balance"),
        ({"data": {"customer": {}}}, 422, "data.as_of"),
        ({"template": "nope"}, 400, "template"),
        ({"channel": "fax"}, 400, "channel"),
        ({"customer": "C-404"}, 400, "customer"),
        ({"data": [1]}, 400, "data"),
    ],
)
def test_api_bad_input_names_the_field(letter, customer, api_client, changes, status, field):
    body = {"template": "letter", "customer": "C-1", "data": LETTER} | changes
    response = api_client("cases:write").post("/api/v1/correspondence", body, format="json")
    assert response.status_code == status, response.content
    assert field in [e["field"] for e in response.json()["errors"]]
    assert not CorrespondenceRequest.objects.exists()


def test_balance_is_kept_as_a_json_number():
    form = SchemaForm(
        {"customer.name": "A", "balance": "10", "as_of": "2026-01-01"},
        schema={
            "type": "object",
            "properties": {
                "customer": {"type": "object", "properties": {"name": {"type": "string"}}},
                "balance": {"type": "number"},
                "as_of": {"type": "string", "format": "date"},
            },
        },
    )
    assert form.is_valid(), form.errors
    assert form.cleaned_data["data"]["balance"] == 10
    assert form.cleaned_data["balance"] == Decimal("10")


def test_a_sent_letter_whose_communication_is_undeliverable_says_so(
    client, agent, reviewer, letter, customer, sync_tasks
):
    # given a released letter whose communication then could not be delivered
    client.force_login(agent)
    sync_tasks(client.post, letter_url(customer), {**FORM, "action": "submit"})
    letter_request = CorrespondenceRequest.objects.get()
    approval = approvals.pending_for(letter_request)
    sync_tasks(approvals.approval_decide, approval=approval, by=reviewer, decision="approve")
    letter_request.refresh_from_db()
    Communication.objects.filter(pk=letter_request.communication_id).update(
        state=CommState.UNDELIVERABLE
    )

    # when the agent looks at it
    detail = client.get(f"/agent/correspondence/{letter_request.pk}/").content.decode()
    listing = client.get("/agent/requests/").content.decode()

    # then its state is the communication's outcome, not "Sent"
    assert '<strong class="state">Undeliverable</strong>' in detail
    assert '<strong class="state">Sent</strong>' not in detail
    assert '<span class="state">Undeliverable</span>' in listing
