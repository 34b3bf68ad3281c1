"""The API's conventions as an integrator meets them: idempotency keys, filters, paging,
JSON-only bodies and staff-only operations."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from ccm.api.auth import api_key_create
from ccm.models import ApiKey

PROBLEM = "application/problem+json"


@pytest.fixture
def staff(admin_user):
    client = APIClient()
    client.force_login(admin_user)
    return client


def key_client(*scopes: str) -> APIClient:
    issued = api_key_create(
        name="erp-" + "-".join(s.replace(":", "_") for s in scopes), scopes=list(scopes)
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.key}")
    return client


def problem_fields(response) -> list[str]:
    assert response["Content-Type"] == PROBLEM
    return [e["field"] for e in response.json()["errors"]]


def _issue(client, key: str, body: bytes):
    return client.post(
        "/api/v1/api-keys", body, content_type="application/json", HTTP_IDEMPOTENCY_KEY=key
    )


# --- Idempotency-Key ---------------------------------------------------------------------


def test_the_same_json_value_replays_whatever_its_whitespace_and_key_order(staff):
    # given a first request
    first = _issue(staff, "order-1", b'{"name": "erp", "scopes": ["me:read"]}')
    # when the client retries with the same value serialised differently
    retry = _issue(staff, "order-1", b'{\n  "scopes" : ["me:read"],\n  "name":"erp"\n}')
    # then it gets the stored response, and no second key was issued
    assert first.status_code == retry.status_code == 201
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.json()["key"] == first.json()["key"]
    assert ApiKey.objects.filter(name="erp").count() == 1


def test_the_same_key_with_another_json_value_is_422(staff):
    _issue(staff, "order-2", b'{"name": "erp", "scopes": ["me:read"]}')
    other = _issue(staff, "order-2", b'{"name": "erp", "scopes": ["me:read", "print"]}')
    assert other.status_code == 422
    assert other.json()["type"].endswith("/idempotency-key-reused")


@pytest.mark.parametrize(
    "key",
    ["", " ", " leading-space", "trailing-space ", "x" * 256, "tab\tinside", "schlüssel"],
)
def test_a_key_outside_its_limits_is_a_400_naming_the_header(staff, key):
    response = staff.post(
        "/api/v1/api-keys",
        {"name": "erp", "scopes": ["me:read"]},
        format="json",
        headers={"Idempotency-Key": key},
    )
    assert response.status_code == 400
    assert problem_fields(response) == ["Idempotency-Key"]
    assert not ApiKey.objects.filter(name="erp").exists()


def test_a_key_of_255_printable_characters_is_accepted(staff):
    key = "a b~!" + "x" * 250
    response = staff.post(
        "/api/v1/api-keys",
        {"name": "erp", "scopes": ["me:read"]},
        format="json",
        headers={"Idempotency-Key": key},
    )
    assert response.status_code == 201


# --- filters and paging ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "scope", "parameter"),
    [
        ("/api/v1/communications?status=sentt", "communications:read", "status"),
        ("/api/v1/communications?category=spam", "communications:read", "category"),
        ("/api/v1/communications?source=fax", "communications:read", "source"),
        ("/api/v1/cases?state=opened", "cases:read", "state"),
        ("/api/v1/cases?type=quarrel", "cases:read", "type"),
        ("/api/v1/cases?team=nobody", "cases:read", "team"),
        ("/api/v1/templates?category=spam", "templates:read", "category"),
    ],
)
def test_an_unknown_enum_value_in_a_filter_is_a_400_naming_it(db, path, scope, parameter):
    response = key_client(scope).get(path)
    assert response.status_code == 400
    assert problem_fields(response) == [parameter]


def test_a_known_enum_value_filters(db):
    response = key_client("communications:read").get("/api/v1/communications?status=sent")
    assert response.status_code == 200
    assert response.json()["results"] == []


@pytest.mark.parametrize("page_size", ["ten", "2.5", "0", "-1", "501", ""])
def test_a_page_size_that_is_not_1_to_500_is_a_400(db, page_size):
    response = key_client("communications:read").get(
        "/api/v1/communications", {"page_size": page_size}
    )
    assert response.status_code == 400
    assert problem_fields(response) == ["page_size"]


def test_a_cursor_the_api_did_not_give_is_a_400(db):
    response = key_client("communications:read").get("/api/v1/communications?cursor=made-up")
    assert response.status_code == 400
    assert problem_fields(response) == ["cursor"]


def test_a_date_time_in_an_offset_postgres_refuses_is_compared_as_an_instant(db):
    # -21:43 is valid ISO 8601 but beyond PostgreSQL's ±15:59: it answered 500
    response = key_client("communications:read").get(
        "/api/v1/communications", {"created_before": "2026-01-17T04:20:29-21:43"}
    )
    assert response.status_code == 200


# --- bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", "template=letter&customer=C-1"),
        (
            "multipart/form-data; boundary=b",
            '--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--',
        ),
    ],
)
def test_only_json_bodies_are_accepted(db, content_type, body):
    response = key_client("communications:write").post(
        "/api/v1/communications", body, content_type=content_type
    )
    assert response.status_code == 415
    assert response["Content-Type"] == PROBLEM


def test_template_data_must_be_an_object(db):
    response = key_client("communications:write").post(
        "/api/v1/communications",
        {"template": "letter", "customer": "C-1", "data": ["not", "an", "object"]},
        format="json",
    )
    assert response.status_code == 400
    assert problem_fields(response) == ["data"]


def test_staff_only_operations_refuse_api_keys(db):
    response = key_client("me:read").get("/api/v1/approvals")
    assert response.status_code == 403
    assert response["Content-Type"] == PROBLEM
