"""The cases API: open, list with filters, move, notes, milestones, timeline, exception actions;
problem details that say what to fix; scopes for API keys and role permissions for staff."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from cases import services
from cases.models import Case
from notifications.customers import services as customer_services
from tests.cases.conftest import COMPLAINT_DETAILS, DATA

PROBLEM = "application/problem+json"
CASES = "/api/v1/cases"


@pytest.fixture
def api(api_client):
    return api_client("cases:read", "cases:write")


def session(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def open_complaint(api, **overrides) -> dict:
    body = {
        "type": "complaint",
        "customer": "C-1",
        "subject": "Claim settled late",
        "details": COMPLAINT_DETAILS,
        **overrides,
    }
    response = api.post(CASES, body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_open_a_complaint_and_read_it(api, customer):
    # when
    opened = open_complaint(api)
    # then
    assert opened["reference"].startswith("CMP-")
    assert (opened["type"], opened["state"], opened["team"]) == (
        "complaint",
        "new",
        "customer_relations",
    )
    assert [m["code"] for m in opened["milestones"]] == [
        "acknowledgement",
        "interim_update",
        "final_response",
    ]
    assert opened["allowed_actions"] == ["assign"]
    read = api.get(f"{CASES}/{opened['reference']}")
    assert read.status_code == 200
    assert read.json()["customer"] == "C-1"
    assert api.get(f"{CASES}/CMP-1999-000001").status_code == 404


def test_bad_input_is_answered_with_what_to_fix(api, customer):
    unknown_customer = api.post(
        CASES, {"type": "dispute", "customer": "nobody", "subject": "x"}, format="json"
    )
    assert unknown_customer.status_code == 422
    assert unknown_customer["Content-Type"] == PROBLEM
    assert unknown_customer.json()["errors"] == [
        {"field": "customer", "message": "unknown customer"}
    ]
    bad_details = api.post(
        CASES,
        {
            "type": "complaint",
            "customer": "C-1",
            "subject": "x",
            "details": {**COMPLAINT_DETAILS, "product": "car_insurance"},
        },
        format="json",
    )
    assert bad_details.status_code == 422
    assert [e["field"] for e in bad_details.json()["errors"]] == ["details.product"]
    no_customer = api.post(CASES, {"type": "complaint", "subject": "x"}, format="json")
    assert no_customer.status_code == 400
    assert no_customer.json()["errors"][0]["field"] == "customer"
    unknown_type = api.post(CASES, {"type": "lawsuit", "subject": "x"}, format="json")
    assert unknown_type.status_code == 400
    assert unknown_type.json()["errors"][0]["field"] == "type"
    assert not Case.objects.exists()


def test_transitions_over_the_api_including_refused_ones(api, customer, agent):
    ref = open_complaint(api)["reference"]
    url = f"{CASES}/{ref}/transitions"
    # a move the state does not allow: 409, naming what is possible
    refused = api.post(url, {"action": "close"}, format="json")
    assert refused.status_code == 409
    assert refused["Content-Type"] == PROBLEM
    assert refused.json()["detail"] == (
        f"Case {ref} is new, so 'close' is not possible; possible now: assign."
    )
    # input a move needs, or an unknown move: 400 naming the field
    missing = api.post(url, {"action": "assign"}, format="json")
    assert (missing.status_code, missing.json()["errors"][0]["field"]) == (400, "assignee")
    unknown = api.post(url, {"action": "escalate"}, format="json")
    assert (unknown.status_code, unknown.json()["errors"][0]["field"]) == (400, "action")
    # the whole life of a case
    steps = [
        ({"action": "assign", "assignee": "agnes"}, "assigned"),
        ({"action": "start"}, "in_progress"),
        ({"action": "wait", "reason": "Asked for photos"}, "waiting"),
        ({"action": "resume"}, "in_progress"),
        ({"action": "resolve", "resolution": "Apologised and paid interest"}, "resolved"),
        ({"action": "reopen", "reason": "Customer disagrees"}, "in_progress"),
        ({"action": "resolve", "resolution": "Explained the delay"}, "resolved"),
        ({"action": "close"}, "closed"),
    ]
    for body, state in steps:
        response = api.post(url, body, format="json")
        assert (response.status_code, response.json()["state"]) == (200, state), body
    assert response.json()["assignee"] == "agnes"
    closed = api.post(url, {"action": "reopen"}, format="json")
    assert closed.status_code == 409
    assert "possible now: none, the case is closed" in closed.json()["detail"]


def test_list_filters(api, customer, agent):
    # given a complaint received ten days ago (its acknowledgement overdue), and a dispute
    late = services.case_open(
        case_type="complaint",
        subject="Claim settled late",
        customer=customer,
        details=COMPLAINT_DETAILS,
        received_at=timezone.now() - timedelta(days=10),
        assignee=agent,
        by=agent,
    )
    services.case_open(case_type="dispute", subject="Card payment", customer=customer, by=agent)

    def refs(**params) -> list[str]:
        response = api.get(CASES, params)
        assert response.status_code == 200, response.json()
        return [row["reference"] for row in response.json()["results"]]

    assert refs(type="complaint") == [late.reference]
    assert refs(assignee="agnes") == [late.reference]
    assert refs(team="disputes") != [late.reference]
    assert len(refs(customer="C-1", state="new")) == 1
    assert refs(overdue="true") == [late.reference]
    assert refs(flagged="true") == [late.reference]
    assert len(refs(flagged="false")) == 1
    bad = api.get(CASES, {"overdue": "maybe"})
    assert (bad.status_code, bad.json()["errors"][0]["field"]) == (400, "overdue")


def test_notes_and_the_timeline(api, customer):
    ref = open_complaint(api)["reference"]
    note = api.post(f"{CASES}/{ref}/notes", {"body": "Customer called back"}, format="json")
    assert note.status_code == 201
    assert note.json()["body"] == "Customer called back"
    empty = api.post(f"{CASES}/{ref}/notes", {"body": ""}, format="json")
    assert (empty.status_code, empty.json()["errors"][0]["field"]) == (400, "body")
    timeline = api.get(f"{CASES}/{ref}/timeline").json()
    assert [(e["kind"], e["action"]) for e in timeline] == [
        ("case", "case.opened"),
        ("note", "note"),
    ]
    assert timeline[1]["detail"]["body"] == "Customer called back"


def test_reach_milestones_over_the_api(api, customer, library):
    ref = open_complaint(api)["reference"]
    reached = api.post(f"{CASES}/{ref}/milestones/acknowledgement/reach", {}, format="json")
    assert reached.status_code == 200
    assert reached.json()["reached_at"] is not None
    communication = reached.json()["communication"]
    detail = api.get(f"{CASES}/{ref}").json()
    assert detail["communications"][0]["id"] == communication
    assert detail["communications"][0]["template"] == "complaint_acknowledgement"
    again = api.post(f"{CASES}/{ref}/milestones/acknowledgement/reach", {}, format="json")
    assert again.status_code == 409
    missing = api.post(f"{CASES}/{ref}/milestones/final_response/reach", {}, format="json")
    assert missing.status_code == 422
    assert {"data.decision", "data.findings"} <= {e["field"] for e in missing.json()["errors"]}
    assert api.post(f"{CASES}/{ref}/milestones/apology/reach", {}).status_code == 404


def test_exception_actions_are_for_operations(compose_failed, agent, ops, sync_tasks):
    ref = Case.objects.get().reference
    url = f"{CASES}/{ref}/regenerate"
    # a service agent works cases, but does not handle exceptions
    forbidden = session(agent).post(url, {"data": DATA}, format="json")
    assert forbidden.status_code == 403
    assert "cases.handle_exception" in forbidden.json()["detail"]
    # data still missing the field: 422 naming it
    client = session(ops)
    still_bad = client.post(url, {"data": DATA}, format="json")
    assert still_bad.status_code == 422
    assert [e["field"] for e in still_bad.json()["errors"]] == ["data.account"]
    # corrected: accepted, and the case follows the communication to sent
    accepted = sync_tasks(client.post, url, {"data": {**DATA, "account": "A-1"}}, format="json")
    assert accepted.status_code == 202
    assert accepted.json()["exception"]["recovery"]["action"] == "regenerate"
    assert client.get(f"{CASES}/{ref}").json()["state"] == "resolved"
    # a resend does not fit a composition failure
    wrong = client.post(f"{CASES}/{ref}/resend", {"channel": "email", "address": "a@b.example"})
    assert wrong.status_code == 409


def test_resend_with_a_bad_address_names_it(letter, customer, integrator, ops, sync_tasks):
    from tests.cases.conftest import request

    customer_services.suppression_add(
        channel="email", address="ada@example.org", reason="complaint"
    )
    sync_tasks(request, customer, integrator)
    ref = Case.objects.get().reference
    response = session(ops).post(
        f"{CASES}/{ref}/resend", {"channel": "email", "address": "not-an-address"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "address"


def test_scopes_and_roles(api_client, customer, make_user):
    reader = api_client("cases:read")
    assert reader.get(CASES).status_code == 200
    refused = reader.post(CASES, {"type": "dispute", "customer": "C-1", "subject": "x"})
    assert refused.status_code == 403
    assert "cases:write" in refused.json()["detail"]
    assert api_client("communications:read").get(CASES).status_code == 403
    author = make_user("alex", "template_author")
    assert session(author).get(CASES).status_code == 403


def test_a_key_without_the_grant_sees_only_the_cases_it_opened(api_client, customer, agent):
    from ccm.api.auth import api_key_create

    # given a case an agent opened, and one another integrator opened over the API
    by_agent = services.case_open(case_type="dispute", subject="Card", customer=customer, by=agent)
    own_key = api_key_create(name="claims", scopes=["cases:read", "cases:write"])
    mine = APIClient()
    mine.credentials(HTTP_AUTHORIZATION=f"Api-Key {own_key.key}")
    opened = open_complaint(mine)
    other_key = api_key_create(name="billing", scopes=["cases:read", "cases:write"])
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Api-Key {other_key.key}")
    # then each key lists only its own, by a public id, and the other's is 404 however named
    assert [c["id"] for c in mine.get(CASES).json()["results"]] == [opened["id"]]
    assert other.get(CASES).json()["results"] == []
    for ref in (opened["id"], opened["reference"], by_agent.reference):
        assert other.get(f"{CASES}/{ref}").status_code == 404
        assert other.post(f"{CASES}/{ref}/notes", {"body": "x"}, format="json").status_code == 404
    assert mine.get(f"{CASES}/{opened['id']}").json()["reference"] == opened["reference"]
