from __future__ import annotations

import base64
import hashlib

import pytest
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from documents import services
from tests.documents.factories import letter_bundle


@pytest.fixture
def api(db):
    issued = api_key_create(name="portal", scopes=["templates:read", "documents:read"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    client.service_user = issued.api_key.user  # type: ignore[attr-defined]
    return client


def test_template_list_shows_the_published_version(api, published):
    body = api.get("/api/v1/templates").json()
    assert [(t["code"], t["published_version"]) for t in body["results"]] == [("letter", 1)]


def test_template_detail_lists_versions_and_schema(api, published):
    body = api.get("/api/v1/templates/letter").json()
    assert body["versions"][0]["state"] == "published"
    assert body["schema"]["required"] == ["customer", "balance", "as_of"]


def test_preview_returns_every_channel(api, published):
    response = api.post(
        "/api/v1/templates/letter/preview",
        {"data": {"customer": {"name": "Ada"}, "balance": 3, "as_of": "2026-01-31"}},
        format="json",
    )
    assert response.status_code == 200
    body = response.json()
    assert body["email"]["subject"] == "Your balance, Ada"
    assert body["sms"]["text"] == "Northwind: balance £3.00."
    assert base64.b64decode(body["pdf"]["base64"]).startswith(b"%PDF")


def test_preview_as_pdf(api, published):
    response = api.post("/api/v1/templates/letter/preview", {"format": "pdf"}, format="json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")


def test_preview_with_bad_data_is_422_listing_fields(api, published):
    response = api.post(
        "/api/v1/templates/letter/preview",
        {"data": {"customer": {"name": ""}, "balance": "lots"}},
        format="json",
    )
    assert response.status_code == 422
    assert response["Content-Type"] == "application/problem+json"
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"customer.name", "balance", "as_of"}


def test_preview_of_unpublished_template_says_what_to_do(api, draft):
    response = api.post("/api/v1/templates/letter/preview", {}, format="json")
    assert response.status_code == 422
    assert "version" in response.json()["detail"]


def test_api_key_previews_published_versions_only(api, published, author):
    # given a published v1 and a draft v2
    draft = services.template_version_create(
        template=published.template, bundle=letter_bundle(heading="Draft"), by=author
    )
    # when the key names each by number
    ok = api.post("/api/v1/templates/letter/preview", {"version": 1}, format="json")
    refused = api.post("/api/v1/templates/letter/preview", {"version": draft.number}, format="json")
    # then
    assert ok.status_code == 200
    assert refused.status_code == 403
    assert refused["Content-Type"] == "application/problem+json"
    assert refused.json()["detail"] == (
        "Version 2 is draft, not published: API keys preview published versions only. "
        "Previewing it needs a staff session of a template author or compliance reviewer."
    )


@pytest.mark.parametrize(("role", "status"), [("author", 200), ("reviewer", 200), ("agent", 403)])
def test_draft_preview_needs_an_author_or_reviewer_session(request, draft, role, status):
    client = APIClient()
    client.force_login(request.getfixturevalue(role))
    response = client.post("/api/v1/templates/letter/preview", {"version": 1}, format="json")
    assert response.status_code == status
    if status == 200:
        assert response.json()["sms"]["text"] == "Northwind: balance £1,234.50."
    else:
        assert "only template authors and compliance reviewers" in response.json()["detail"]


def test_unknown_template_is_404(api):
    assert api.post("/api/v1/templates/nope/preview", {}, format="json").status_code == 404


def test_document_and_its_exact_bytes(api, published):
    document = services.document_compose(
        version=published, data=published.content["samples"]["default"], by=api.service_user
    )
    meta = api.get(f"/api/v1/documents/{document.public_id}").json()
    assert meta["id"] == str(document.public_id)
    assert meta["sha256"] == document.sha256
    assert meta["template"] == "letter"
    pdf = api.get(f"/api/v1/documents/{document.public_id}/pdf")
    body = b"".join(pdf.streaming_content)
    assert hashlib.sha256(body).hexdigest() == document.sha256
    assert pdf["X-Content-SHA256"] == document.sha256


def test_documents_need_their_scope(db, published):
    issued = api_key_create(name="narrow", scopes=["templates:read"])
    document = services.document_compose(
        version=published, data=published.content["samples"]["default"]
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    assert client.get(f"/api/v1/documents/{document.public_id}/pdf").status_code == 403


def test_another_keys_document_is_404_by_public_id_and_by_counter(api, published):
    # given a document composed for someone else's request
    other = api_key_create(name="other", scopes=["documents:read"]).api_key.user
    document = services.document_compose(
        version=published, data=published.content["samples"]["default"], by=other
    )
    # then this key finds neither it nor its PDF, and the counter id is no URL at all
    assert api.get(f"/api/v1/documents/{document.public_id}").status_code == 404
    assert api.get(f"/api/v1/documents/{document.public_id}/pdf").status_code == 404
    assert api.get(f"/api/v1/documents/{document.pk}/pdf").status_code == 404
