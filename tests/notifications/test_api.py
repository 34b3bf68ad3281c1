from __future__ import annotations

import pytest
from django.core import mail
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from notifications.models import Communication, Customer

PROBLEM = "application/problem+json"
DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}


@pytest.fixture
def api(db):
    issued = api_key_create(
        name="core-banking",
        scopes=["customers:read", "customers:write", "communications:read", "communications:write"],
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


def test_customer_upsert_creates_then_updates(api):
    body = {
        "external_ref": "C-9",
        "name": "Grace Hopper",
        "emails": ["Grace@Example.ORG"],
        "phones": ["+44 7911 123456"],
        "postal_address": ["1 Navy Way", "Arlington"],
    }
    created = api.post("/api/v1/customers", body, format="json")
    assert created.status_code == 201
    contacts = {(c["kind"], c["value"]) for c in created.json()["contacts"]}
    assert contacts == {("email", "Grace@example.org"), ("phone", "+447911123456")}
    updated = api.post("/api/v1/customers", {**body, "name": "Rear Admiral Hopper"}, format="json")
    assert updated.status_code == 200
    assert Customer.objects.get().name == "Rear Admiral Hopper"


def test_invalid_phone_is_a_field_error(api):
    response = api.post(
        "/api/v1/customers",
        {"external_ref": "C-9", "name": "X", "phones": ["12"]},
        format="json",
    )
    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    assert response.json()["errors"][0]["field"] == "phones[0]"


def test_customer_get_and_patch(api, customer):
    assert api.get("/api/v1/customers/C-1").json()["name"] == "Ada Lovelace"
    patched = api.patch("/api/v1/customers/C-1", {"language": "de"}, format="json")
    assert patched.status_code == 200
    assert patched.json()["language"] == "de"
    assert api.get("/api/v1/customers/nope").status_code == 404


def test_consent_ledger_and_preferences(api, customer):
    for granted in (True, False):
        response = api.post(
            "/api/v1/customers/C-1/consents",
            {
                "channel": "sms",
                "category": "marketing",
                "granted": granted,
                "legal_basis": "consent",
            },
            format="json",
        )
        assert response.status_code == 201
    ledger = api.get("/api/v1/customers/C-1/consents").json()
    assert [entry["granted"] for entry in ledger] == [False, True]  # newest first, both kept
    prefs = api.get("/api/v1/customers/C-1/preferences").json()
    assert prefs == [{"category": "marketing", "channel": "sms", "allowed": False}]


def test_request_a_communication_returns_202(api, letter, customer, sync_tasks):
    response = sync_tasks(
        api.post,
        "/api/v1/communications",
        {"template": "letter", "customer": "C-1", "data": DATA},
        format="json",
        HTTP_IDEMPOTENCY_KEY="order-1",
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "received"
    detail = api.get(f"/api/v1/communications/{body['id']}").json()
    assert detail["status"] == "sent"
    assert detail["deliveries"][0]["channel"] == "email"
    assert detail["deliveries"][0]["state"] == "sent"
    assert detail["documents"][0]["pdf_url"].endswith(
        f"/api/v1/documents/{detail['documents'][0]['id']}/pdf"
    )
    assert any(step.get("decision") == "chosen" for step in detail["decision_trace"])
    assert "communication.composed" in [e["action"] for e in detail["timeline"]]
    assert detail["consent_applied"][0]["channel"] == "email"


def test_retry_with_the_same_idempotency_key_sends_once(api, letter, customer, sync_tasks):
    def post():
        return api.post(
            "/api/v1/communications",
            {"template": "letter", "customer": "C-1", "data": DATA},
            format="json",
            HTTP_IDEMPOTENCY_KEY="order-2",
        )

    first = sync_tasks(post)
    second = sync_tasks(post)
    assert first.json()["id"] == second.json()["id"]
    assert Communication.objects.count() == 1
    assert len(mail.outbox) == 1


def test_bad_data_lists_the_fields(api, letter, customer):
    response = api.post(
        "/api/v1/communications",
        {"template": "letter", "customer": "C-1", "data": {"customer": {}, "balance": "x"}},
        format="json",
    )
    assert response.status_code == 422
    assert response["Content-Type"] == PROBLEM
    fields = {e["field"] for e in response.json()["errors"]}
    # (data.customer is the system's, filled from the customer record: never missing)
    assert fields == {"data.balance", "data.as_of"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"template": "nope", "customer": "C-1", "data": {}}, "template"),
        ({"template": "letter", "customer": "C-404", "data": {}}, "customer"),
    ],
)
def test_unknown_template_or_customer_is_422(api, letter, customer, body, field):
    response = api.post("/api/v1/communications", body, format="json")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field


def test_list_with_filters_and_cancel(api, letter, customer):
    created = api.post(
        "/api/v1/communications",
        {"template": "letter", "customer": "C-1", "data": DATA, "correlation_id": "inv-7"},
        format="json",
    ).json()
    listed = api.get("/api/v1/communications?correlation_id=inv-7").json()["results"]
    assert [c["id"] for c in listed] == [created["id"]]
    assert api.get("/api/v1/communications?status=sent").json()["results"] == []
    cancel = api.post(
        f"/api/v1/communications/{created['id']}/cancel",
        {"reason": "sent by mistake"},
        format="json",
    )
    assert cancel.status_code == 200
    assert cancel.json()["status"] == "cancelled"
    again = api.post(
        f"/api/v1/communications/{created['id']}/cancel", {"reason": "twice"}, format="json"
    )
    assert again.status_code == 409


def test_scopes_are_enforced(db, letter, customer):
    issued = api_key_create(name="reader", scopes=["communications:read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    response = client.post(
        "/api/v1/communications",
        {"template": "letter", "customer": "C-1", "data": DATA},
        format="json",
    )
    assert response.status_code == 403
    assert "communications:write" in response.json()["detail"]


def test_consent_ledger_rows_cannot_be_changed_on_postgres(customer, admin_user):
    from django.db import DatabaseError, connection, transaction

    from notifications.customers.services import consent_record

    if connection.vendor != "postgresql":
        pytest.skip("the append-only trigger is PostgreSQL's")
    record = consent_record(
        customer=customer,
        channel="email",
        category="marketing",
        granted=True,
        legal_basis="consent",
        source="form",
        by=admin_user,
    )
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        type(record).objects.filter(pk=record.pk).update(granted=False)
    record.refresh_from_db()
    assert record.granted is True


def test_an_sms_delivery_shows_its_segments(api, letter, customer, sync_tasks):
    # given an urgent request: SMS comes first
    response = sync_tasks(
        api.post,
        "/api/v1/communications",
        {"template": "letter", "customer": "C-1", "data": DATA, "urgency": "high"},
        format="json",
    )
    detail = api.get(f"/api/v1/communications/{response.json()['id']}").json()
    [sms] = detail["deliveries"]
    assert sms["channel"] == "sms"
    assert sms["meta"]["segments"] == 1
    assert sms["meta"]["encoding"] == "GSM-7"


def key_client(name: str, *scopes: str, source_systems: list[str] | None = None) -> APIClient:
    grant = {"source_systems": source_systems} if source_systems else {}
    issued = api_key_create(name=name, scopes=list(scopes), **grant)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


ALL_READ_WRITE = ("communications:read", "communications:write", "documents:read")


def test_an_integrator_sees_only_its_own_communications_and_documents(letter, customer, sync_tasks):
    # given core banking requested a letter, which was composed and archived as a PDF
    owner = key_client("core-banking-2", *ALL_READ_WRITE)
    created = sync_tasks(
        owner.post,
        "/api/v1/communications",
        {"template": "letter", "customer": "C-1", "data": DATA},
        format="json",
    ).json()
    url = f"/api/v1/communications/{created['id']}"
    pdf = owner.get(url).json()["documents"][0]["pdf_url"].removeprefix("http://testserver")
    assert owner.get(pdf).status_code == 200
    # when another integrator, holding every scope, reads, lists, cancels and downloads
    other = key_client("billing", *ALL_READ_WRITE)
    # then each is a 404, and nothing changed
    assert other.get(url).status_code == 404
    assert other.get("/api/v1/communications").json()["results"] == []
    assert other.post(f"{url}/cancel", {"reason": "x"}, format="json").status_code == 404
    assert other.get(pdf).status_code == 404
    communication = Communication.objects.get()
    assert communication.state != "cancelled"
    # and the counter ids of the database are no URLs at all
    assert str(communication.pk) != created["id"]
    assert owner.get(f"/api/v1/communications/{communication.pk}").status_code == 404
    assert other.get(f"/api/v1/documents/{communication.document_id}/pdf").status_code == 404


def test_a_key_granted_a_source_system_sees_its_communications(letter, customer):
    owner = key_client("core-banking-3", *ALL_READ_WRITE)
    created = owner.post(
        "/api/v1/communications",
        {"template": "letter", "customer": "C-1", "data": DATA},
        format="json",
    ).json()
    crm = key_client("crm", "communications:read", source_systems=["default"])
    elsewhere = key_client("claims", "communications:read", source_systems=["claims"])
    assert crm.get(f"/api/v1/communications/{created['id']}").status_code == 200
    assert [c["id"] for c in crm.get("/api/v1/communications").json()["results"]] == [created["id"]]
    assert elsewhere.get(f"/api/v1/communications/{created['id']}").status_code == 404
