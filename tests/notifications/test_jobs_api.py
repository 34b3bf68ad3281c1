"""The batch endpoint and send jobs over the API."""

from __future__ import annotations

import pytest
from django.core import mail
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from notifications.customers import services as customer_services
from notifications.models import Communication, SendJob

PROBLEM = "application/problem+json"
DATA = {"customer": {"name": "Ada Lovelace"}, "balance": 12.5, "as_of": "2026-05-01"}


def client_with_key(name: str) -> APIClient:
    issued = api_key_create(name=name, scopes=["communications:read", "communications:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


@pytest.fixture
def api(db):
    return client_with_key("core-banking")


@pytest.fixture
def customers(db, admin_user):
    made = []
    for i in range(3):
        customer, _ = customer_services.customer_upsert(
            external_ref=f"C-{i}", name=f"Customer {i}", emails=[f"c{i}@example.org"], by=admin_user
        )
        made.append(customer)
    return made


def item(ref: str, **extra) -> dict:
    return {"template": "letter", "customer": ref, "data": DATA, **extra}


def test_batch_accepts_the_good_items_and_refuses_the_bad_ones(api, letter, customers, sync_tasks):
    # given three good items and three bad ones (unknown customer, bad data, no template field)
    body = {
        "items": [
            item("C-0"),
            item("C-404"),
            item("C-1", data={"balance": "lots", "as_of": "not a date"}),
            item("C-2", idempotency_key="invoice-7"),
            {"customer": "C-0", "data": DATA},
            item("C-1", channel="sms"),
        ]
    }
    # when
    response = sync_tasks(api.post, "/api/v1/communications/batch", body, format="json")
    # then
    assert response.status_code == 202
    result = response.json()
    assert (result["accepted"], result["refused"]) == (3, 3)
    statuses = [i["status"] for i in result["items"]]
    assert statuses == ["accepted", "refused", "refused", "accepted", "refused", "accepted"]
    assert result["items"][1]["problem"]["errors"] == [
        {"field": "customer", "message": "There is no customer 'C-404'."}
    ]
    fields = {e["field"] for e in result["items"][2]["problem"]["errors"]}
    assert fields == {"data.balance", "data.as_of"}
    assert result["items"][2]["problem"]["status"] == 422
    assert result["items"][4]["problem"]["errors"][0]["field"] == "template"
    sent = Communication.objects.get(public_id=result["items"][3]["id"])
    assert sent.idempotency_key == "invoice-7"
    assert sent.state == "sent"
    assert Communication.objects.get(public_id=result["items"][5]["id"]).channel_override == "sms"
    assert {"Customer 0 <c0@example.org>", "Customer 2 <c2@example.org>"} <= {
        m.to[0] for m in mail.outbox
    }
    # and the job reports what happened to each
    job = api.get(result["job"]["url"]).json()
    assert job["source"] == "api_batch"
    assert job["progress"]["accepted"] == 3
    assert job["progress"]["refused"] == 3
    assert job["progress"]["by_state"] == {"sent": 3}
    assert job["state"] == "completed"
    assert job["finished_at"] is not None


def test_the_same_item_key_twice_makes_one_communication(api, letter, customers, sync_tasks):
    body = {"items": [item("C-0", idempotency_key="k-1")]}
    first = sync_tasks(api.post, "/api/v1/communications/batch", body, format="json").json()
    second = sync_tasks(api.post, "/api/v1/communications/batch", body, format="json").json()
    assert first["items"][0]["id"] == second["items"][0]["id"]
    assert Communication.objects.count() == 1
    assert len(mail.outbox) == 1


def test_the_call_key_replays_the_answer(api, letter, customers, sync_tasks):
    body = {"items": [item("C-0"), item("C-1")]}

    def post():
        return api.post(
            "/api/v1/communications/batch", body, format="json", HTTP_IDEMPOTENCY_KEY="batch-1"
        )

    first = sync_tasks(post)
    second = sync_tasks(post)
    assert second["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert SendJob.objects.count() == 1
    assert Communication.objects.count() == 2


def test_more_than_a_thousand_items_is_refused_whole(api, letter, customers):
    response = api.post(
        "/api/v1/communications/batch", {"items": [item("C-0")] * 1001}, format="json"
    )
    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    assert "at most 1000" in response.json()["errors"][0]["message"]
    assert response.json()["errors"][0]["field"] == "items"
    assert not SendJob.objects.exists()


@pytest.mark.parametrize("body", [{}, {"items": []}, {"items": "C-0"}, []])
def test_a_batch_without_items_is_a_400(api, body):
    response = api.post("/api/v1/communications/batch", body, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "items"


def test_a_job_is_its_clients_only(api, letter, customers, sync_tasks):
    made = sync_tasks(
        api.post, "/api/v1/communications/batch", {"items": [item("C-0")]}, format="json"
    ).json()
    other = client_with_key("billing")
    assert other.get(f"/api/v1/jobs/{made['job']['id']}").status_code == 404
    assert other.get(f"/api/v1/jobs/{made['job']['id']}/items").status_code == 404
    assert api.get(f"/api/v1/jobs/{made['job']['id']}").status_code == 200


def test_job_items_are_a_cursor_in_order(api, letter, customers, sync_tasks):
    body = {"items": [item(f"C-{i % 3}") for i in range(5)] + [item("C-404")]}
    made = sync_tasks(api.post, "/api/v1/communications/batch", body, format="json").json()
    page = api.get(f"/api/v1/jobs/{made['job']['id']}/items?page_size=4").json()
    assert [i["index"] for i in page["results"]] == [0, 1, 2, 3]
    rest = api.get(page["next"]).json()
    assert [i["index"] for i in rest["results"]] == [4, 5]
    assert rest["next"] is None
    assert rest["results"][1]["status"] == "refused"
    assert page["results"][0]["communication_state"] == "sent"


def test_reading_a_job_needs_the_read_scope(db, letter, customers):
    issued = api_key_create(name="writer", scopes=["communications:write"])
    writer = APIClient()
    writer.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    made = writer.post("/api/v1/communications/batch", {"items": [item("C-0")]}, format="json")
    assert made.status_code == 202
    assert writer.get(f"/api/v1/jobs/{made.json()['job']['id']}").status_code == 403
